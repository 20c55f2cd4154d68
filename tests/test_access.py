"""Who may do what: the rules, and how the store keeps users and the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import ProtocolError
from controller.people import access
from controller.people.access import Caller, Need
from controller.stores import Stores, sqlite_stores
from inventory.people import AuditEntry, AuditQuery, Outcome, Role

OPS = Caller("ops", Role.CENTRAL_OPS, frozenset())
IT = Caller("it1", Role.SCHOOL_IT, frozenset({"s1", "s3"}))
VIEWER = Caller("v", Role.VIEWER, frozenset())
SCOPED_VIEWER = Caller("sv", Role.VIEWER, frozenset({"s1"}))


@pytest.mark.parametrize(
    ("caller", "need", "school", "allowed"),
    [
        (OPS, Need.ADMIN, None, True),
        (OPS, Need.CHANGE, "s9", True),
        (IT, Need.ADMIN, None, False),
        (IT, Need.READ, None, True),  # answered within their schools
        (IT, Need.READ, "s1", True),
        (IT, Need.READ, "s2", False),
        (IT, Need.CHANGE, "s3", True),
        (IT, Need.CHANGE, "s2", False),
        (IT, Need.CHANGE, None, False),
        (VIEWER, Need.READ, "s2", True),
        (VIEWER, Need.CHANGE, "s2", False),
        (VIEWER, Need.ADMIN, None, False),
        (SCOPED_VIEWER, Need.READ, "s1", True),
        (SCOPED_VIEWER, Need.READ, "s2", False),
        (SCOPED_VIEWER, Need.CHANGE, "s1", False),
    ],
)
def test_roles_and_schools(caller: Caller, need: Need, school: str | None, allowed: bool) -> None:
    assert (access.refusal(caller, need, "devices.decommission", school) is None) is allowed


def test_a_refusal_names_the_user_the_action_and_what_they_lack() -> None:
    assert access.refusal(IT, Need.CHANGE, "devices.decommission", "s2") == (
        "user it1 (school-it) may not devices.decommission in school s2: their schools are s1, s3"
    )
    assert access.refusal(VIEWER, Need.CHANGE, "devices.ping", "s1") == (
        "user v (viewer) may not devices.ping: a viewer only reads"
    )
    assert access.refusal(IT, Need.ADMIN, "users.list", None) == (
        "user it1 (school-it) may not users.list: only central-ops may"
    )


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer sfu_abc")], "sfu_abc"),
        ([("Authorization", "bearer  sfu_abc ")], "sfu_abc"),
        ([("authorization", "Basic dXNlcg==")], None),
        ([("authorization", "Bearer ")], None),
        ([("authorization-bin", b"x")], None),
        ([], None),
        (None, None),
    ],
)
def test_bearer(metadata: list[tuple[str, str | bytes]] | None, token: str | None) -> None:
    assert access.bearer(metadata) == token


def test_tokens_are_long_random_and_kept_as_hashes() -> None:
    a, b = access.mint_token(), access.mint_token()
    assert a != b and a.startswith("sfu_") and len(a) == 47 and a[4:].isalnum()
    assert access.hash_token(a) != access.hash_token(b) and len(access.hash_token(a)) == 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("it", Role.SCHOOL_IT, []), "a school-it user needs at least one school"),
        (("ops", Role.CENTRAL_OPS, ["s1"]), "a central-ops user has every school"),
        (("a b", Role.VIEWER, []), "user name 'a b' is not valid"),
        (("v", Role.VIEWER, ["s 1"]), "school id 's 1' is not valid"),
        (("v", Role.VIEWER, [f"s{i}" for i in range(501)]), "at most 500 schools"),
    ],
)
def test_new_users_are_checked(args: tuple[str, Role, list[str]], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        access.new_user(*args, valid_seconds=0, created_by="ops", now=0.0)
    with pytest.raises(ProtocolError, match="valid 1 hour to 3 years"):
        access.new_user("v", Role.VIEWER, [], valid_seconds=60, created_by="ops", now=0.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Stores]:
    s = sqlite_stores(tmp_path / "c.db")
    yield s
    s.close()


def test_users_by_token_hash_revoked_and_given_again(store: Stores) -> None:
    user = access.new_user("it1", Role.SCHOOL_IT, ["s2", "s1", "s1"], 0, "ops", 100.0)
    assert user.schools == ("s1", "s2")
    assert store.people.add_user(user, b"h1")
    assert not store.people.add_user(user, b"h2"), "an active name is not given twice"
    assert store.people.find_user(b"h1") == user and store.people.find_user(b"h2") is None
    revoked = store.people.revoke_user("it1", 200.0)
    assert revoked is not None and revoked.revoked_at == 200.0 and not revoked.active(300.0)
    assert store.people.revoke_user("nobody", 200.0) is None
    again = access.new_user("it1", Role.VIEWER, [], 0, "ops", 300.0)
    assert store.people.add_user(again, b"h3")
    assert store.people.find_user(b"h1") is None, "the old token is gone with the old user"
    assert [u.role for u in store.people.list_users()] == [Role.VIEWER]


def test_expired_users_are_not_active(store: Stores) -> None:
    user = access.new_user("t", Role.VIEWER, [], 3600, "ops", 0.0)
    assert user.active(3599.0) and not user.active(3600.0)


def _entry(at: float, actor: str, school: str, outcome: Outcome) -> AuditEntry:
    return AuditEntry(0, at, actor, "devices.show", "panel-1", school, outcome, "m", "ipv4:x")


def test_audit_is_appended_and_read_newest_first_within_scope(store: Stores) -> None:
    store.people.append_audit(_entry(1.0, "ops", "s1", Outcome.OK))
    store.people.append_audit(_entry(2.0, "it1", "s2", Outcome.DENIED))
    store.people.append_audit(_entry(3.0, "ops", "s2", Outcome.OK))
    store.people.append_audit(_entry(4.0, "ops", "", Outcome.OK))
    everything = store.people.list_audit(AuditQuery())
    assert [e.at for e in everything] == [4.0, 3.0, 2.0, 1.0]
    assert [e.entry_id for e in everything] == [4, 3, 2, 1]
    scoped = store.people.list_audit(AuditQuery(visible_schools=frozenset({"s1"}), reader="it1"))
    assert [(e.actor, e.school_id) for e in scoped] == [("it1", "s2"), ("ops", "s1")]
    assert [e.at for e in store.people.list_audit(AuditQuery(outcome=Outcome.DENIED))] == [2.0]
    assert [e.at for e in store.people.list_audit(AuditQuery(since=2.5, actor="ops"))] == [4.0, 3.0]
    assert [e.at for e in store.people.list_audit(AuditQuery(limit=1))] == [4.0]
