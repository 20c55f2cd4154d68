"""The uplink store's contract on both databases: exact values read back, schools in
code point order, hostile values kept as data (a device's NUL written out, ids no
database could key refused alike), and on PostgreSQL a school's check started once
and ended once when several controllers race for it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from controller.errors import StoreError
from controller.stores import Stores, open_stores
from controller.uplink.sql_store import ID_CHARS
from inventory.uplink import UplinkCheck, UplinkState

T0 = 1_800_000_000.123456
R = TypeVar("R")


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def test_checks_are_read_back_exactly(store: Stores) -> None:
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0, "d1", 10_000_000), T0 - 75)
    assert store.uplink.latest_uplink_checks() == [UplinkCheck("s1", T0, "d1", 10_000_000)]
    ended = store.uplink.finish_uplink_check("s1", T0, 9_999_999, 0.000001, 123.456789, "")
    assert ended == UplinkCheck("s1", T0, "d1", 9_999_999, 0.000001, 123.456789, "")
    assert ended.state is UplinkState.OK
    assert store.uplink.latest_uplink_checks("s1", measured=True) == [ended]
    assert store.uplink.uplink_last_started() == {"s1": T0}
    assert store.uplink.uplink_failures() == {"s1": 0}
    # A microsecond later is another check, and its own row.
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0 + 0.000001, "d2", 1), T0)
    assert [c.started_at for c in store.uplink.latest_uplink_checks()] == [T0 + 0.000001]
    assert store.uplink.finish_uplink_check("s1", T0 + 0.000002, 1, None, None, "x") is None
    assert store.uplink.expire_uplink_checks(T0 + 1, "no answer") == 1
    assert store.uplink.uplink_failures() == {"s1": 1}
    assert store.uplink.prune_uplink_checks(T0 + 0.000001) == 1
    assert store.uplink.prune_uplink_checks(T0 + 0.000001) == 0
    assert [c.device_id for c in store.uplink.latest_uplink_checks()] == ["d2"]


def test_schools_are_in_code_point_order(store: Stores) -> None:
    names = ["b", "a", "B", "a-2", "a.1", "Z9", "é", "ä"]
    for n, school in enumerate(names):
        assert store.uplink.start_uplink_check(UplinkCheck(school, T0 + n, "d", 1), 0)
    assert [c.school_id for c in store.uplink.latest_uplink_checks()] == sorted(names)
    assert sorted(names) == ["B", "Z9", "a", "a-2", "a.1", "b", "ä", "é"]
    scoped = store.uplink.latest_uplink_checks(schools=frozenset({"b", "B", "ä", "nope"}))
    assert [c.school_id for c in scoped] == ["B", "b", "ä"]
    assert store.uplink.latest_uplink_checks(schools=frozenset()) == []
    assert store.uplink.uplink_last_started() == {s: T0 + n for n, s in enumerate(names)}


HOSTILE = [
    "o'brien",
    'say "hi"',
    "'); DROP TABLE uplink_checks; --",
    "x' OR '1'='1",
    "%s %(name)s ? :name $1 {}",
    "back\\slash \\x00",
    "line\nbreak\ttab\r",
    "ünïcödé ✓ 𝄞 \u202e",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_data(store: Stores, value: str) -> None:
    assert store.uplink.start_uplink_check(UplinkCheck(value, T0, value, 1), 0)
    assert store.uplink.finish_uplink_check(value, T0, 1, None, None, value) == UplinkCheck(
        value, T0, value, 1, None, None, value
    )
    assert store.uplink.latest_uplink_checks(value) == [
        UplinkCheck(value, T0, value, 1, error=value)
    ]
    assert store.uplink.uplink_failures() == {value: 1}
    scoped = store.uplink.latest_uplink_checks(schools=frozenset({value, "other"}))
    assert [c.school_id for c in scoped] == [value]


def test_a_devices_nul_is_written_out_and_an_id_with_one_refused(store: Stores) -> None:
    assert store.uplink.start_uplink_check(UplinkCheck("s1", T0, "d1", 1), 0)
    ended = store.uplink.finish_uplink_check("s1", T0, 1, None, None, "bad\x00answer")
    assert ended is not None and ended.error == "bad\\x00answer"
    assert store.uplink.latest_uplink_checks("s1")[0].error == "bad\\x00answer"
    for bad in (UplinkCheck("s\x00", T0, "d", 1), UplinkCheck("s2", T0, "d\x00", 1)):
        with pytest.raises(StoreError, match="a NUL character cannot be stored"):
            store.uplink.start_uplink_check(bad, 0)
    assert store.uplink.finish_uplink_check("s\x00", T0, 1, 1.0, 1.0, "") is None
    assert store.uplink.latest_uplink_checks("s\x00") == []
    assert store.uplink.latest_uplink_checks(schools=frozenset({"s\x00", "s1"}))[0].school_id == (
        "s1"
    )
    assert store.uplink.expire_uplink_checks(T0 + 1, "gone\x00") == 0
    assert list(store.uplink.uplink_last_started()) == ["s1"]


def test_long_values_are_kept_or_refused_the_same_way(store: Stores) -> None:
    # Random-looking, so that PostgreSQL cannot compress it into an index row.
    long = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(100_000))
    at_limit = long[:ID_CHARS]
    assert store.uplink.start_uplink_check(UplinkCheck(at_limit, T0, long, 1), 0)
    ended = store.uplink.finish_uplink_check(at_limit, T0, 1, None, None, long)
    assert ended == UplinkCheck(at_limit, T0, long, 1, None, None, long)
    assert store.uplink.latest_uplink_checks(schools=frozenset({at_limit})) == [ended]
    with pytest.raises(StoreError, match=f"an id over {ID_CHARS} characters"):
        store.uplink.start_uplink_check(UplinkCheck(long[: ID_CHARS + 1], T0, "d", 1), 0)
    assert store.uplink.finish_uplink_check(long, T0, 1, 1.0, 1.0, "") is None
    assert store.uplink.latest_uplink_checks(long) == []
    assert store.uplink.uplink_last_started() == {at_limit: T0}


@pytest.fixture
def replicas(pg_url: str) -> Iterator[list[Stores]]:
    """Four controllers' stores on one PostgreSQL database."""
    stores: list[Stores] = []
    try:
        for _ in range(4):
            stores.append(open_stores(pg_url))
        yield stores
    finally:
        for s in stores:
            s.close()


def race(stores: list[Stores], act: Callable[[int, Stores], R]) -> list[R]:
    """``act`` of each store at once, each in its own thread; their answers in order."""
    barrier = threading.Barrier(len(stores))
    answers: list[R | BaseException | None] = [None] * len(stores)

    def run(n: int) -> None:
        barrier.wait()
        try:
            answers[n] = act(n, stores[n])
        except BaseException as exc:  # raised below, in the test's thread
            answers[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers  # type: ignore[return-value]


def test_of_controllers_starting_one_school_at_once_exactly_one_starts(
    replicas: list[Stores],
) -> None:
    def start(school: str) -> list[bool]:
        return race(
            replicas,
            lambda n, s: s.uplink.start_uplink_check(
                UplinkCheck(school, T0 + n / 1000, f"d{n}", 1), T0 - 75
            ),
        )

    # Each round is a race of four: without the lock, 3 runs of 3 measured lost one.
    for school in (f"s{n}" for n in range(25)):
        started = start(school)
        assert started.count(True) == 1, f"{school}: {started}"
    latest = replicas[0].uplink.latest_uplink_checks()
    assert len(latest) == 25 and all(c.state is UplinkState.RUNNING for c in latest)
    rows = replicas[0].sql.read("SELECT COUNT(*) AS n FROM uplink_checks")
    assert rows[0]["n"] == 25


def test_of_controllers_ending_one_check_at_once_exactly_one_ends_it(
    replicas: list[Stores],
) -> None:
    def finish(school: str) -> list[UplinkCheck | None]:
        return race(
            replicas,
            lambda n, s: s.uplink.finish_uplink_check(school, T0, 100, 1.0, 100.0 + n, ""),
        )

    for school in (f"s{n}" for n in range(25)):
        assert replicas[0].uplink.start_uplink_check(UplinkCheck(school, T0, "d", 100), 0)
        ended = finish(school)
        winners = [c for c in ended if c is not None]
        assert len(winners) == 1, f"{school}: {ended}"
        assert replicas[0].uplink.latest_uplink_checks(school) == winners
