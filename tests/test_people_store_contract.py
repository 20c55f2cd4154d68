"""The people's store, one contract on both databases: users by the hash of their
token, revoked and given again, the audit log newest first within a reader's scope,
and hostile values kept as data."""

from __future__ import annotations

import pytest

from controller.errors import StoreError
from controller.people import access
from controller.people.stored_values import INDEXED_CHARS
from controller.stores import Stores
from inventory.people import AuditEntry, AuditQuery, Outcome, Role, User

T0 = 1_800_000_000.123456


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def _user(name: str, role: Role = Role.VIEWER, schools: tuple[str, ...] = ()) -> User:
    return User(name, role, schools, T0, "ops", None, None)


def _entry(at: float, actor: str, school: str, outcome: Outcome, **fields: str) -> AuditEntry:
    values = {"action": "devices.show", "target": "panel-1", "message": "m", "peer": "ipv4:x"}
    values.update(fields)
    return AuditEntry(
        0,
        at,
        actor,
        values["action"],
        values["target"],
        school,
        outcome,
        values["message"],
        values["peer"],
    )


def test_users_by_token_hash_revoked_and_given_again(store: Stores) -> None:
    user = access.new_user("it1", Role.SCHOOL_IT, ["s2", "s1"], 3600, "ops", T0)
    assert store.people.add_user(user, b"h1") is True
    assert store.people.add_user(user, b"h2") is False, "an active name is not given twice"
    assert store.people.find_user(b"h1") == User(
        "it1", Role.SCHOOL_IT, ("s1", "s2"), T0, "ops", T0 + 3600, None
    )
    assert store.people.find_user(b"h2") is None
    revoked = store.people.revoke_user("it1", T0 + 100)
    assert revoked == User("it1", Role.SCHOOL_IT, ("s1", "s2"), T0, "ops", T0 + 3600, T0 + 100)
    assert store.people.revoke_user("it1", T0 + 200) == revoked, "again is a no-op"
    assert store.people.revoke_user("nobody", T0) is None
    again = _user("it1")
    assert store.people.add_user(again, b"h3") is True
    assert store.people.find_user(b"h1") is None, "the old token is gone with the old user"
    assert store.people.list_users() == [again]


def test_an_expired_users_name_may_be_given_again(store: Stores) -> None:
    old = access.new_user("t", Role.VIEWER, [], 3600, "ops", T0)
    assert store.people.add_user(old, b"h1")
    early = access.new_user("t", Role.VIEWER, [], 0, "ops", T0 + 3599)
    assert not store.people.add_user(early, b"h2"), "still active a second before"
    late = access.new_user("t", Role.CENTRAL_OPS, [], 0, "ops", T0 + 3600)
    assert store.people.add_user(late, b"h2")
    assert store.people.list_users() == [late]


def test_users_are_listed_by_name_in_code_point_order(store: Stores) -> None:
    for name in ("b", "a", "B", "a-2", "a.1", "Z9"):
        assert store.people.add_user(_user(name), name.encode())
    assert [u.name for u in store.people.list_users()] == ["B", "Z9", "a", "a-2", "a.1", "b"]


def test_a_token_hash_held_by_another_user_is_refused_in_one_line(store: Stores) -> None:
    assert store.people.add_user(_user("a"), b"same")
    with pytest.raises(StoreError) as caught:
        store.people.add_user(_user("b"), b"same")
    assert "\n" not in str(caught.value)
    assert [u.name for u in store.people.list_users()] == ["a"]


def test_audit_is_appended_and_read_newest_first_within_scope(store: Stores) -> None:
    store.people.append_audit(_entry(1.0, "ops", "s1", Outcome.OK))
    store.people.append_audit(_entry(2.0, "it1", "s2", Outcome.DENIED, action="users.list"))
    store.people.append_audit(_entry(3.0, "ops", "s2", Outcome.OK, target="panel-2"))
    store.people.append_audit(_entry(4.0, "ops", "", Outcome.FAILED))
    everything = store.people.list_audit(AuditQuery())
    assert everything == [
        AuditEntry(4, 4.0, "ops", "devices.show", "panel-1", "", Outcome.FAILED, "m", "ipv4:x"),
        AuditEntry(3, 3.0, "ops", "devices.show", "panel-2", "s2", Outcome.OK, "m", "ipv4:x"),
        AuditEntry(2, 2.0, "it1", "users.list", "panel-1", "s2", Outcome.DENIED, "m", "ipv4:x"),
        AuditEntry(1, 1.0, "ops", "devices.show", "panel-1", "s1", Outcome.OK, "m", "ipv4:x"),
    ]

    def ids(query: AuditQuery) -> list[int]:
        return [e.entry_id for e in store.people.list_audit(query)]

    assert ids(AuditQuery(visible_schools=frozenset({"s1"}), reader="it1")) == [2, 1]
    assert ids(AuditQuery(visible_schools=frozenset(), reader="it1")) == [2]
    assert ids(AuditQuery(visible_schools=frozenset({"s1", "s2"}), reader="x")) == [3, 2, 1]
    assert ids(AuditQuery(outcome=Outcome.DENIED)) == [2]
    assert ids(AuditQuery(since=2.5, actor="ops")) == [4, 3]
    assert ids(AuditQuery(action="users.list")) == [2]
    assert ids(AuditQuery(target="panel-2")) == [3]
    assert ids(AuditQuery(school_id="")) == [4]
    assert ids(AuditQuery(limit=1)) == [4]
    assert ids(AuditQuery(limit=0)) == []
    assert ids(AuditQuery(limit=-1)) == []
    assert ids(AuditQuery(actor="nobody")) == []


HOSTILE = [
    "o'brien",
    'say "hi"',
    "'); DROP TABLE audit; --",
    "x' OR '1'='1",
    "%s %(name)s ? :name $1 {}",
    "back\\slash \\x00",
    "line\nbreak\ttab\r",
    "ünïcödé ✓ 𝄞 \u202e",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_data(store: Stores, value: str) -> None:
    store.people.append_audit(
        AuditEntry(0, T0, value, value, value, value, Outcome.DENIED, value, value)
    )
    found = store.people.list_audit(AuditQuery(actor=value, action=value, target=value))
    assert found == [AuditEntry(1, T0, value, value, value, value, Outcome.DENIED, value, value)]
    scoped = AuditQuery(visible_schools=frozenset({value}), reader="someone-else")
    assert [e.entry_id for e in store.people.list_audit(scoped)] == [1]
    user = User(value or "x", Role.SCHOOL_IT, (value or "s",), T0, value, None, None)
    assert store.people.add_user(user, value.encode() + b"!")
    assert store.people.find_user(value.encode() + b"!") == user
    assert store.people.list_users() == [user]
    assert store.people.list_audit(AuditQuery()) != [], "the log is still there"


def test_a_nul_is_written_out_in_the_audit_and_refused_in_a_user(store: Stores) -> None:
    store.people.append_audit(_entry(T0, "a\x00b", "s\x00", Outcome.DENIED, target="\x00"))
    assert store.people.list_audit(AuditQuery(actor="a\x00b")) == [
        AuditEntry(
            1, T0, "a\\x00b", "devices.show", "\\x00", "s\\x00", Outcome.DENIED, "m", "ipv4:x"
        )
    ]
    assert [e.entry_id for e in store.people.list_audit(AuditQuery(school_id="s\x00"))] == [1]
    with pytest.raises(StoreError, match="a NUL character cannot be stored"):
        store.people.add_user(_user("a\x00b"), b"h")
    with pytest.raises(StoreError, match="a NUL character cannot be stored"):
        store.people.add_user(_user("a", schools=("s\x00",)), b"h")
    assert store.people.revoke_user("a\x00b", T0) is None
    assert store.people.list_users() == []


def test_long_values_are_kept_or_cut_the_same_way(store: Stores) -> None:
    # Random-looking, so that PostgreSQL cannot compress it into an index row.
    long = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(100_000))
    store.people.append_audit(_entry(T0, long, long, Outcome.OK, target=long, message=long))
    (found,) = store.people.list_audit(AuditQuery(actor=long, school_id=long))
    assert found.target == long and found.message == long
    assert found.actor == long[:INDEXED_CHARS] and found.school_id == long[:INDEXED_CHARS]
    with pytest.raises(StoreError, match=f"a name over {INDEXED_CHARS} characters"):
        store.people.add_user(_user("n" * (INDEXED_CHARS + 1)), b"h")
    assert store.people.revoke_user("n" * (INDEXED_CHARS + 1), T0) is None
    at_limit = _user("n" * INDEXED_CHARS, Role.SCHOOL_IT, tuple(f"s{i}" for i in range(500)))
    assert store.people.add_user(at_limit, b"h")
    assert store.people.find_user(b"h") == at_limit


def test_times_are_kept_to_the_microsecond(store: Stores) -> None:
    user = User("t", Role.VIEWER, (), T0, "ops", T0 + 0.000001, None)
    store.people.add_user(user, b"h")
    assert store.people.find_user(b"h") == user
    store.people.append_audit(_entry(T0 + 0.000001, "ops", "", Outcome.OK))
    assert [e.at for e in store.people.list_audit(AuditQuery(since=T0 + 0.000001))] == [
        T0 + 0.000001
    ]
