"""The enrollment store, one contract on both databases: tokens and their uses, a
device's enrollment, re-enrollment, decommission and move, certificates and their
renewals and adoption, hostile values kept as data or refused alike; and, on
PostgreSQL, what two controllers doing the same at once may and may not both do.

Rows of other features' tables (a device seen on a stream, its reports, a rollout's
claim) are written here in SQL, so that this contract does not hang on those stores.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from controller.enroll import tokens
from controller.enroll.cert_store import CertCounts, CertState, Renewed
from controller.enroll.store import DeviceMove
from controller.enroll.stored_values import ID_CHARS
from controller.errors import EnrollRefused, HostsClaimed, StoreError
from controller.stores import Stores, open_stores
from inventory.model import Enrollment, EnrollToken
from tests.store_fixtures import at_once

T0 = 1_800_000_000.123456
REFUSED_TOKEN = str(tokens.token_refused())
_TOKEN_IDS = itertools.count(1)


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def _token(store: Stores, school: str = "s1", uses: int = 1, named: str = "") -> bytes:
    """Adds a token of ``school`` (its id ``named``, or a new one); its hash."""
    token_id = named or f"t{next(_TOKEN_IDS)}"
    token_hash = f"hash of {token_id}".encode()
    store.enrollments.add_enroll_token(
        EnrollToken(token_id, school, uses, 0, T0 + 3600, T0), token_hash
    )
    return token_hash


def _enrollment(device: str, school: str = "s1", serial: str = "a1", **more: Any) -> Enrollment:
    return replace(Enrollment(device, school, serial, T0 + 86_400, T0, "tok1"), **more)


def _seen(store: Stores, device: str, school: str) -> None:
    """A device the registry knows from its streams (the fleet's table)."""
    store.sql.write(
        "INSERT INTO devices (device_id, kind, school_id, room_id, first_seen, offline_after,"
        " labels) VALUES (?, 'panel', ?, 'r1', ?, 60, '{\"grade\": \"5\"}')",
        (device, school, T0 - 10),
    )


def _count(store: Stores, table: str, device: str) -> int:
    rows = store.sql.read(f"SELECT COUNT(*) AS n FROM {table} WHERE device_id = ?", (device,))
    return int(rows[0]["n"])


# --- tokens ------------------------------------------------------------------------------


def test_tokens_are_listed_newest_first_then_by_id_in_code_point_order(store: Stores) -> None:
    for token_id in ("b", "B", "a"):
        store.enrollments.add_enroll_token(
            EnrollToken(token_id, "s1", 2, 0, T0 + 60, T0), token_id.encode()
        )
    newer = EnrollToken("z", "s2", 1, 0, T0 + 60, T0 + 1)
    store.enrollments.add_enroll_token(newer, b"z")
    assert [t.token_id for t in store.enrollments.list_enroll_tokens(None)] == ["z", "B", "a", "b"]
    assert [t.token_id for t in store.enrollments.list_enroll_tokens("s1")] == ["B", "a", "b"]
    assert store.enrollments.list_enroll_tokens("s3") == []
    assert store.enrollments.get_enroll_token("z") == newer
    assert store.enrollments.find_enroll_token(b"z") == newer
    assert store.enrollments.find_enroll_token(b"y") is None
    assert store.enrollments.revoke_enroll_token("z", T0 + 5) == replace(newer, revoked_at=T0 + 5)
    assert store.enrollments.revoke_enroll_token("z", T0 + 9) == replace(newer, revoked_at=T0 + 5)
    assert store.enrollments.revoke_enroll_token("nosuch", T0) is None
    with pytest.raises(StoreError) as twice:
        store.enrollments.add_enroll_token(EnrollToken("a", "s1", 1, 0, T0, T0), b"other")
    assert "\n" not in str(twice.value)


def test_a_tokens_uses_are_taken_one_by_one_until_none_is_left(store: Stores) -> None:
    token_hash = _token(store, uses=2, named="t2")
    store.enrollments.enroll(token_hash, _enrollment("panel-1"), T0)
    store.enrollments.enroll(token_hash, _enrollment("panel-2"), T0)
    with pytest.raises(EnrollRefused) as used_up:
        store.enrollments.enroll(token_hash, _enrollment("panel-3"), T0)
    assert (str(used_up.value), used_up.value.status) == (REFUSED_TOKEN, "PERMISSION_DENIED")
    token = store.enrollments.get_enroll_token("t2")
    assert token is not None and (token.uses, token.uses_left) == (2, 0)
    assert store.enrollments.get_enrollment("panel-3") is None


@pytest.mark.parametrize("why", ["expired", "revoked", "unknown"])
def test_an_unusable_token_enrolls_nothing(store: Stores, why: str) -> None:
    token_hash = _token(store, uses=3, named="t3")
    now = T0
    if why == "expired":
        now = T0 + 3600  # expires_at itself is too late
    elif why == "revoked":
        store.enrollments.revoke_enroll_token("t3", T0)
    else:
        token_hash = b"no such hash"
    with pytest.raises(EnrollRefused, match="not valid"):
        store.enrollments.enroll(token_hash, _enrollment("panel-1"), now)
    assert store.enrollments.get_enrollment("panel-1") is None
    token = store.enrollments.get_enroll_token("t3")
    assert token is not None and (token.uses, token.uses_left) == (0, 3)


# --- a device's enrollment ---------------------------------------------------------------


def test_an_enrollment_is_kept_as_given_and_replaced_only_when_opened(store: Stores) -> None:
    token_hash = _token(store, uses=5, named="t5")
    first = _enrollment("panel-1", not_after=T0 + 0.000001)
    store.enrollments.enroll(token_hash, first, T0)
    assert store.enrollments.get_enrollment("panel-1") == first
    with pytest.raises(EnrollRefused) as taken:
        store.enrollments.enroll(token_hash, _enrollment("panel-1", serial="b2"), T0 + 1)
    assert str(taken.value) == str(tokens.taken("panel-1"))
    assert store.enrollments.allow_reenroll("panel-1") == replace(first, reenroll=True)
    assert store.enrollments.allow_reenroll("panel-9") is None
    again = _enrollment("panel-1", serial="b2", enrolled_at=T0 + 2)
    store.enrollments.enroll(token_hash, again, T0 + 2)
    assert store.enrollments.get_enrollment("panel-1") == again
    token = store.enrollments.get_enroll_token("t5")
    assert token is not None and (token.uses, token.uses_left) == (2, 3), "a refusal takes none"


def test_a_token_enrolls_only_its_own_schools_devices(store: Stores) -> None:
    store.enrollments.enroll(_token(store, "s1"), _enrollment("panel-1"), T0)
    store.enrollments.allow_reenroll("panel-1")
    foreign = _token(store, "s2", uses=5, named="t-s2")
    with pytest.raises(EnrollRefused, match="cannot enroll with this token"):
        store.enrollments.enroll(foreign, _enrollment("panel-1", "s2", "b2"), T0)
    _seen(store, "panel-2", "s1")
    with pytest.raises(EnrollRefused, match="cannot enroll with this token"):
        store.enrollments.enroll(foreign, _enrollment("panel-2", "s2"), T0)
    assert store.enrollments.get_enrollment("panel-2") is None
    store.enrollments.enroll(_token(store, "s1"), _enrollment("panel-2", "s1"), T0)
    assert store.enrollments.get_enrollment("panel-2") == _enrollment("panel-2", "s1")
    token = store.enrollments.get_enroll_token("t-s2")
    assert token is not None and token.uses == 0


def test_decommission_revokes_once_and_covers_devices_seen_only_on_streams(
    store: Stores,
) -> None:
    store.enrollments.enroll(_token(store), _enrollment("panel-1"), T0)
    revoked = store.enrollments.decommission("panel-1", T0 + 5)
    assert revoked == _enrollment("panel-1", revoked_at=T0 + 5)
    assert store.enrollments.decommission("panel-1", T0 + 9) == revoked
    _seen(store, "panel-2", "s2")
    assert store.enrollments.decommission("panel-2", T0 + 6) == Enrollment(
        "panel-2", "s2", "", 0.0, T0 - 10, "", revoked_at=T0 + 6
    )
    assert store.enrollments.decommission("panel-9", T0) is None
    assert store.enrollments.get_enrollment("panel-9") is None


# --- certificates ------------------------------------------------------------------------


def test_certificates_are_listed_in_code_point_order_and_counted(store: Stores) -> None:
    token_hash = _token(store, uses=10)
    for device in ("b", "a", "B", "a-2", "a.1", "Z9"):
        store.enrollments.enroll(token_hash, _enrollment(device, serial=f"s-{device}"), T0)
    store.enrollments.record_issued("b", "ca-1", T0 + 1)
    store.enrollments.record_issued("a", "ca-2", T0 + 2)
    store.enrollments.record_issued("B", "ca-2", T0 + 3)
    store.enrollments.add_renewal("a", "s-a", Renewed("r-a", T0 + 99_999, T0 + 4, "ca-2"))
    store.enrollments.decommission("Z9", T0 + 5)
    states = store.enrollments.cert_states()
    assert [s.device_id for s in states] == ["B", "Z9", "a", "a-2", "a.1", "b"]
    assert states[1] == CertState("Z9", "s1", "s-Z9", T0 + 86_400, T0, "", None, True)
    assert states[2] == CertState("a", "s1", "s-a", T0 + 86_400, T0 + 2, "ca-2", "r-a", False)
    assert store.enrollments.cert_state("a-2") == CertState(
        "a-2", "s1", "s-a-2", T0 + 86_400, T0, ""
    )
    assert store.enrollments.cert_state("nobody") is None
    assert store.enrollments.cert_counts("ca-2", T0) == CertCounts(5, 3, 1, 0)
    assert store.enrollments.cert_counts("ca-2", T0 + 86_400.5) == CertCounts(5, 3, 1, 5)
    assert store.enrollments.cert_counts("ca-9", T0) == CertCounts(5, 5, 1, 0)


def test_a_certificate_is_adopted_only_if_newer_than_the_stores(store: Stores) -> None:
    assert store.enrollments.adopt_certificate("panel-1", "s1", "f1", T0 + 500, T0 + 10)
    assert store.enrollments.get_enrollment("panel-1") == Enrollment(
        "panel-1", "s1", "f1", T0 + 500, T0 + 10, "restore"
    )
    assert store.enrollments.cert_state("panel-1") == CertState(
        "panel-1", "s1", "f1", T0 + 500, T0 + 10, ""
    )
    assert not store.enrollments.adopt_certificate("panel-1", "s1", "f0", T0 + 400, T0 + 10)
    store.enrollments.allow_reenroll("panel-1")
    store.enrollments.decommission("panel-1", T0 + 11)
    assert store.enrollments.adopt_certificate("panel-1", "s2", "f2", T0 + 600, T0 + 20)
    assert store.enrollments.get_enrollment("panel-1") == Enrollment(
        "panel-1", "s2", "f2", T0 + 600, T0 + 20, "restore"
    ), "its decommission and re-enrollment marks cleared"
    store.enrollments.record_issued("panel-1", "ca-3", T0 + 30)
    assert not store.enrollments.adopt_certificate("panel-1", "s2", "f3", T0 + 700, T0 + 25)


# --- moving a device ---------------------------------------------------------------------


def _device_rows(store: Stores, device: str) -> None:
    """What placed ``device`` in its school: a report, a Wi-Fi association, a command
    result, and commands in its outbox (one pending, one done, one expired)."""
    store.sql.write(
        "INSERT INTO device_reports VALUES (?, ?, ?, ?, ?)", (device, b"sys", b"net", T0, T0)
    )
    store.sql.write("INSERT INTO device_wifi VALUES (?, 'aa:bb', -50, ?)", (device, T0))
    store.sql.write(
        "INSERT INTO command_results VALUES (?, 1, 'c1', 'ok', 'done', ?, ?)", (device, T0, T0)
    )
    store.sql.write_many(
        "INSERT INTO outbox VALUES (?, ?, 'l1', ?, ?, ?, ?)",
        [
            (f"{device}-pending", device, b"cmd", T0, T0 + 600, None),
            (f"{device}-done", device, b"cmd", T0, T0 + 600, T0 + 1),
            (f"{device}-old", device, b"cmd", T0, T0 + 5, None),
        ],
    )


def test_a_move_puts_the_device_in_its_new_school_open_to_enroll_there(store: Stores) -> None:
    store.enrollments.enroll(_token(store), _enrollment("panel-1"), T0)
    _seen(store, "panel-1", "s1")
    _device_rows(store, "panel-1")
    moved = store.enrollments.move_device("panel-1", "s2", T0 + 10)
    assert moved == DeviceMove("panel-1", "s1", "s2", True)
    assert store.enrollments.get_enrollment("panel-1") == _enrollment(
        "panel-1", "s2", reenroll=True
    )
    (device,) = store.sql.read(
        "SELECT school_id, room_id, labels FROM devices WHERE device_id = 'panel-1'"
    )
    assert (device["school_id"], device["room_id"], device["labels"]) == ("s2", "", "{}")
    for table in ("device_reports", "device_wifi", "command_results"):
        assert _count(store, table, "panel-1") == 0, table
    outbox = store.sql.read(
        "SELECT command_id, expires_at FROM outbox WHERE device_id = 'panel-1' ORDER BY command_id"
    )
    assert [(r["command_id"], r["expires_at"]) for r in outbox] == [
        ("panel-1-done", T0 + 600),
        ("panel-1-old", T0 + 5),
        ("panel-1-pending", T0 + 10),
    ]
    with pytest.raises(EnrollRefused):
        store.enrollments.enroll(_token(store, "s1"), _enrollment("panel-1", serial="c3"), T0)
    again = _enrollment("panel-1", "s2", "c3", enrolled_at=T0 + 12)
    store.enrollments.enroll(_token(store, "s2"), again, T0 + 12)
    assert store.enrollments.get_enrollment("panel-1") == again


def test_a_move_of_a_device_seen_only_on_streams_or_to_its_own_school(store: Stores) -> None:
    _seen(store, "panel-2", "s1")
    assert store.enrollments.move_device("panel-2", "s3", T0) == DeviceMove(
        "panel-2", "s1", "s3", False
    )
    assert store.enrollments.get_enrollment("panel-2") is None
    assert store.enrollments.move_device("panel-2", "s3", T0) == DeviceMove(
        "panel-2", "s3", "s3", False
    )
    assert store.enrollments.move_device("panel-none", "s2", T0) is None


def test_a_device_in_an_unfinished_rollout_is_not_moved(store: Stores) -> None:
    store.enrollments.enroll(_token(store), _enrollment("panel-1"), T0)
    _seen(store, "panel-1", "s1")
    _device_rows(store, "panel-1")
    store.sql.write("INSERT INTO rollout_claims VALUES ('panel-1', 7)")
    with pytest.raises(HostsClaimed) as claimed:
        store.enrollments.move_device("panel-1", "s2", T0)
    assert claimed.value.claims == {"panel-1": 7}
    assert store.enrollments.get_enrollment("panel-1") == _enrollment("panel-1")
    assert _count(store, "command_results", "panel-1") == 1, "nothing changed"


# --- hostile values ----------------------------------------------------------------------

HOSTILE = [
    "o'brien",
    'say "hi"',
    "'); DROP TABLE enrollments; --",
    "x' OR '1'='1",
    "%s %(name)s ? :name $1 {}",
    "back\\slash \\x00",
    "line\nbreak\ttab\r",
    "ünïcödé ✓ 𝄞 \u202e",
    "𝄞" * ID_CHARS,
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_data(store: Stores, value: str) -> None:
    token = EnrollToken(value, value, 2, 0, T0 + 60, T0)
    store.enrollments.add_enroll_token(token, b"h")
    assert store.enrollments.list_enroll_tokens(value) == [token]
    assert store.enrollments.get_enroll_token(value) == token
    enrolled = Enrollment(value, value, value, T0 + 60, T0, value)
    store.enrollments.enroll(b"h", enrolled, T0)
    assert store.enrollments.get_enrollment(value) == enrolled
    store.enrollments.record_issued(value, value, T0 + 1)
    assert store.enrollments.cert_state(value) == CertState(
        value, value, value, T0 + 60, T0 + 1, value
    )
    assert store.enrollments.cert_counts(value, T0) == CertCounts(1, 0, 0, 0)
    assert store.enrollments.add_renewal(value, value, Renewed(value + "!", T0, T0 + 2, value))
    assert store.enrollments.confirm_renewal(value, value + "!")
    assert store.enrollments.move_device(value, "s-other", T0) == DeviceMove(
        value, value, "s-other", True
    )
    assert [s.device_id for s in store.enrollments.cert_states()] == [value]


def test_a_nul_is_refused_in_what_is_written_and_found_nowhere(store: Stores) -> None:
    nul = "a\x00b"
    with pytest.raises(StoreError, match="a NUL character cannot be stored"):
        store.enrollments.add_enroll_token(EnrollToken("t", nul, 1, 0, T0 + 60, T0), b"h")
    token_hash = _token(store, named="t1")
    for refused in (
        _enrollment(nul),
        _enrollment("panel-1", nul),
        _enrollment("panel-1", serial=nul),
        replace(_enrollment("panel-1"), token_id=nul),
    ):
        with pytest.raises(StoreError, match=r"^[a-z ]+ 'a\\x00b': a NUL character cannot be"):
            store.enrollments.enroll(token_hash, refused, T0)
    token = store.enrollments.get_enroll_token("t1")
    assert token is not None and token.uses == 0, "refused before the token was touched"
    store.enrollments.enroll(token_hash, _enrollment("panel-1"), T0)
    with pytest.raises(StoreError, match="NUL"):
        store.enrollments.record_issued("panel-1", nul, T0)
    with pytest.raises(StoreError, match="NUL"):
        store.enrollments.add_renewal("panel-1", "a1", Renewed(nul, T0, T0, "ca"))
    with pytest.raises(StoreError, match="NUL"):
        store.enrollments.adopt_certificate("panel-1", "s1", nul, T0, T0 + 99)
    with pytest.raises(StoreError, match="NUL"):
        store.enrollments.move_device("panel-1", nul, T0)
    with pytest.raises(StoreError, match="NUL"):
        store.enrollments.cert_counts(nul, T0)
    assert store.enrollments.add_renewal(nul, "a1", Renewed("b", T0, T0, "ca")) is False
    assert store.enrollments.add_renewal("panel-1", nul, Renewed("b", T0, T0, "ca")) is False
    assert store.enrollments.confirm_renewal("panel-1", nul) is False
    assert store.enrollments.get_enrollment(nul) is None
    assert store.enrollments.cert_state(nul) is None
    assert store.enrollments.get_enroll_token(nul) is None
    assert store.enrollments.revoke_enroll_token(nul, T0) is None
    assert store.enrollments.list_enroll_tokens(nul) == []
    assert store.enrollments.allow_reenroll(nul) is None
    assert store.enrollments.decommission(nul, T0) is None
    assert store.enrollments.move_device(nul, "s2", T0) is None
    assert store.enrollments.get_enrollment("panel-1") == _enrollment("panel-1")


def test_long_ids_are_refused_and_long_serials_kept(store: Stores) -> None:
    # Random-looking, so that PostgreSQL could not compress it into an index row.
    long = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(100_000))
    token_hash = _token(store, uses=3, named="t1")
    with pytest.raises(StoreError, match=f"an id over {ID_CHARS} characters"):
        store.enrollments.enroll(token_hash, _enrollment(long), T0)
    with pytest.raises(StoreError, match=f"an id over {ID_CHARS} characters"):
        store.enrollments.add_enroll_token(EnrollToken(long, "s1", 1, 0, T0, T0), b"long")
    assert store.enrollments.get_enrollment(long) is None
    assert store.enrollments.get_enroll_token(long) is None
    assert store.enrollments.move_device(long, "s2", T0) is None
    kept = replace(_enrollment("panel-1", serial=long), token_id=long)
    store.enrollments.enroll(token_hash, kept, T0)
    assert store.enrollments.get_enrollment("panel-1") == kept
    assert store.enrollments.add_renewal("panel-1", long, Renewed(long[::-1], T0, T0 + 1, long))
    assert store.enrollments.confirm_renewal("panel-1", long[::-1])
    state = store.enrollments.cert_state("panel-1")
    assert state is not None and (state.serial, state.ca_id) == (long[::-1], long)


# --- two controllers at once (PostgreSQL) ------------------------------------------------


@pytest.fixture
def two_controllers(pg_url: str) -> Iterator[tuple[Stores, Stores]]:
    """Two controllers' stores on one PostgreSQL database, each with its own pool."""
    first = open_stores(pg_url)
    try:
        second = open_stores(pg_url)
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


@pytest.mark.parametrize("round_", range(5))
def test_a_token_of_n_uses_claimed_by_n_plus_one_devices_on_two_controllers_enrolls_n(
    two_controllers: tuple[Stores, Stores], round_: int
) -> None:
    uses = 5
    token_hash = _token(two_controllers[0], uses=uses, named="t")
    calls = [
        functools.partial(
            two_controllers[i % 2].enrollments.enroll, token_hash, _enrollment(f"panel-{i}"), T0
        )
        for i in range(uses + 1)
    ]
    outcomes = at_once(*calls)
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert [str(o) for o in refused] == [REFUSED_TOKEN]
    assert outcomes.count(None) == uses
    token = two_controllers[1].enrollments.get_enroll_token("t")
    assert token is not None and (token.uses, token.uses_left) == (uses, 0)
    enrolled = [s.device_id for s in two_controllers[1].enrollments.cert_states()]
    assert len(enrolled) == uses
    assert {f"panel-{i}" for i, o in enumerate(outcomes) if o is None} == set(enrolled)


@pytest.mark.parametrize("round_", range(5))
def test_a_device_enrolled_by_two_controllers_at_once_is_enrolled_once(
    two_controllers: tuple[Stores, Stores], round_: int
) -> None:
    hashes = [_token(two_controllers[0], named=f"t{i}") for i in range(6)]
    calls = [
        functools.partial(
            two_controllers[i % 2].enrollments.enroll,
            hashes[i],
            _enrollment("panel-1", serial=f"serial-{i}"),
            T0,
        )
        for i in range(6)
    ]
    outcomes = at_once(*calls)
    assert outcomes.count(None) == 1
    winner = outcomes.index(None)
    assert {str(o) for o in outcomes if o is not None} == {str(tokens.taken("panel-1"))}
    enrolled = two_controllers[1].enrollments.get_enrollment("panel-1")
    assert enrolled is not None and enrolled.serial == f"serial-{winner}"
    uses = [two_controllers[1].enrollments.get_enroll_token(f"t{i}") for i in range(6)]
    assert [t.uses if t else None for t in uses] == [int(i == winner) for i in range(6)]


def test_a_renewal_is_confirmed_once_by_two_controllers_at_once(
    two_controllers: tuple[Stores, Stores],
) -> None:
    first, second = two_controllers
    first.enrollments.enroll(_token(first), _enrollment("panel-1"), T0)
    for round_ in range(5):
        serial = f"r{round_}"
        current = first.enrollments.cert_state("panel-1")
        assert current is not None
        renewed = Renewed(serial, T0 + round_, T0 + round_, "ca-2")
        assert first.enrollments.add_renewal("panel-1", current.serial, renewed)
        outcomes = at_once(
            *(
                functools.partial(s.enrollments.confirm_renewal, "panel-1", serial)
                for s in (first, second)
            )
        )
        assert sorted(map(bool, outcomes)) == [False, True]
        assert second.enrollments.cert_state("panel-1") == CertState(
            "panel-1", "s1", serial, T0 + round_, T0 + round_, "ca-2"
        )


def test_two_moves_of_one_device_at_once_run_one_after_the_other(
    two_controllers: tuple[Stores, Stores],
) -> None:
    first, second = two_controllers
    first.enrollments.enroll(_token(first), _enrollment("panel-1"), T0)
    _seen(first, "panel-1", "s1")
    outcomes = at_once(
        lambda: first.enrollments.move_device("panel-1", "s2", T0),
        lambda: second.enrollments.move_device("panel-1", "s3", T0),
    )
    a, b = outcomes
    assert isinstance(a, DeviceMove) and isinstance(b, DeviceMove)
    # Whichever went first, the second moved it from where the first put it.
    went_first, went_second = (a, b) if a.from_school == "s1" else (b, a)
    assert went_first.from_school == "s1"
    assert went_second.from_school == went_first.to_school
    enrolled = second.enrollments.get_enrollment("panel-1")
    assert enrolled is not None and enrolled.school_id == went_second.to_school
    (device,) = second.sql.read("SELECT school_id FROM devices WHERE device_id = 'panel-1'")
    assert device["school_id"] == went_second.to_school


def _blocked_on_a_lock(url: str, timeout: float = 10.0) -> None:
    """Waits until a session of the database waits for a row another holds."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting is not None and waiting[0]:
                return
            time.sleep(0.01)
    pytest.fail("no session waited for the held row")


def _in_thread(call: Callable[[], object]) -> Callable[[], object]:
    """Starts ``call`` on a thread; the returned function waits for its outcome."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # the outcome under test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def result() -> object:
        thread.join(30)
        return outcome[0]

    return result


@pytest.mark.parametrize("other_commits", [True, False])
def test_an_enrollment_waits_for_anothers_use_of_the_last_one_and_reads_its_count(
    pg_url: str, other_commits: bool
) -> None:
    stores = open_stores(pg_url)
    try:
        token_hash = _token(stores, uses=1, named="t")
        with psycopg.connect(pg_url) as other:
            # Another controller's enrollment, in the middle of its transaction.
            other.execute(
                "UPDATE enroll_tokens SET uses_left = uses_left - 1, uses = uses + 1 "
                "WHERE token_id = 't'"
            )
            outcome = _in_thread(
                lambda: stores.enrollments.enroll(token_hash, _enrollment("panel-2"), T0)
            )
            _blocked_on_a_lock(pg_url)
            if other_commits:
                other.commit()
            else:
                other.rollback()
        result = outcome()
        if other_commits:
            assert isinstance(result, EnrollRefused) and str(result) == REFUSED_TOKEN
            assert stores.enrollments.get_enrollment("panel-2") is None
        else:
            assert result is None
            assert stores.enrollments.get_enrollment("panel-2") == _enrollment("panel-2")
        token = stores.enrollments.get_enroll_token("t")
        assert token is not None and (token.uses, token.uses_left) == (1, 0)
    finally:
        stores.close()


def test_a_renewal_waits_for_a_re_enrollment_and_is_void_with_it(pg_url: str) -> None:
    stores = open_stores(pg_url)
    try:
        stores.enrollments.enroll(_token(stores), _enrollment("panel-1"), T0)
        with psycopg.connect(pg_url) as other:
            # Another controller re-enrolling the device: a new certificate in use.
            other.execute("UPDATE enrollments SET serial = 'c3' WHERE device_id = 'panel-1'")
            outcome = _in_thread(
                lambda: stores.enrollments.add_renewal(
                    "panel-1", "a1", Renewed("b2", T0, T0 + 1, "ca-2")
                )
            )
            _blocked_on_a_lock(pg_url)
            other.commit()
        assert outcome() is False
        assert stores.enrollments.cert_state("panel-1") == CertState(
            "panel-1", "s1", "c3", T0 + 86_400, T0, ""
        )
    finally:
        stores.close()
