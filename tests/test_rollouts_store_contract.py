"""The rollouts' store, one contract on both databases: hostile values kept as data,
NULs and long ids treated alike, text ordered alike, the lesson schedule as the store
reads it; and, on PostgreSQL, controllers racing on the same rollout (a host claimed
by one rollout only, a wave started once and its failed count exact, one end, one set
of windows). tests/test_rollouts_store.py has the store's ordinary life."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any

import psycopg
import pytest

from controller.errors import HostsClaimed, StoreError
from controller.rollouts.store import NewHost, RolloutQuery
from controller.rollouts.stored_values import ID_CHARS
from controller.stores import Stores, open_stores
from inventory.rollouts import (
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutSpec,
    RolloutState,
    WaveRecord,
)
from tests.store_fixtures import at_once

T0 = 1_800_000_000.123456
SPEC = RolloutSpec(playbook="timesync.yml", selector="school=s1")
NONE = LessonRates(0, 0)
HOSTILE = [
    "o'brien",
    'say "hi"',
    "'); DROP TABLE rollouts; --",
    "x' OR '1'='1",
    "%s %(name)s ? ?1 :name $1 {}",
    "back\\slash \\x00",
    "line\nbreak\ttab\r",
    "ünïcödé ✓ 𝄞 \u202e",
]
# Random-looking, so that PostgreSQL cannot compress it into an index row.
LONG = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(100_000))


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def _hosts(*device_ids: str, school: str = "s1") -> list[NewHost]:
    return [NewHost(d, school) for d in device_ids]


def _wave_of(store: Stores, rollout_id: int, wave: int) -> WaveRecord:
    record = store.rollouts.get_rollout(rollout_id)
    assert record is not None
    [found] = [w for w in record.waves if w.wave == wave]
    return found


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_data(store: Stores, value: str) -> None:
    spec = replace(SPEC, playbook=value, selector=value, extra_vars={value: [value, "\x00"]})
    new = [NewHost(f"{value}-1", value), NewHost(f"{value}-2", value)]
    rollout_id = store.rollouts.create_rollout(spec, new, value, T0, NONE)
    record = store.rollouts.get_rollout(rollout_id)
    assert record is not None
    assert (record.spec, record.created_by) == (spec, value)
    assert store.rollouts.rollout_schools(rollout_id) == {value}
    assert store.rollouts.list_rollouts(RolloutQuery(schools=frozenset({value}))) == [record]
    store.rollouts.set_waiting(rollout_id, value, T0 + 1)
    store.rollouts.start_wave(rollout_id, 1, [f"{value}-1", f"{value}-2"], T0 + 2)
    result = HostResult(f"{value}-1", value, 1, HostOutcome.FAILED, value, value, rc=2)
    store.rollouts.finish_wave(
        rollout_id, 1, [result, HostResult(f"{value}-2", value, 1, HostOutcome.OK)], T0 + 3
    )
    kept = store.rollouts.rollout_host(rollout_id, f"{value}-1")
    assert kept is not None
    # Control characters are escaped wherever a host's output is kept.
    escaped = value.replace("\r", "\\x0d").replace("\u202e", "\\u202e")
    assert (kept.task, kept.message, kept.rc) == (escaped, escaped, 2)
    ended = store.rollouts.set_rollout_state(rollout_id, RolloutState.HALTED, value, T0 + 4)
    assert ended is not None
    assert (ended.reason, ended.waiting) == (value, value)
    assert ended.waves == (WaveRecord(1, 2, T0 + 2, T0 + 3, 1),)
    store.rollouts.set_windows(value, [value, f"{value} 2"])
    assert store.rollouts.windows([value]) == {value: [value, f"{value} 2"]}
    assert store.rollouts.windows() == {value: [value, f"{value} 2"]}


def test_long_values_are_kept_and_long_ids_refused_alike(store: Stores) -> None:
    spec = replace(SPEC, playbook=LONG, selector=LONG, extra_vars={"v": LONG})
    at_limit = "d" * ID_CHARS
    rollout_id = store.rollouts.create_rollout(
        spec, [NewHost(at_limit, "s" * ID_CHARS)], LONG, T0, NONE
    )
    store.rollouts.set_waiting(rollout_id, LONG, T0 + 1)
    record = store.rollouts.set_rollout_state(rollout_id, RolloutState.ABORTED, LONG, T0 + 2)
    assert record is not None
    assert (record.spec, record.created_by, record.reason, record.waiting) == (
        spec,
        LONG,
        LONG,
        LONG,
    )
    assert [h.device_id for h in store.rollouts.rollout_hosts(rollout_id)] == [at_limit]

    over = "d" * (ID_CHARS + 1)
    with pytest.raises(StoreError, match=f"over {ID_CHARS} characters cannot be stored"):
        store.rollouts.create_rollout(SPEC, _hosts("d1", over), "ana", T0, NONE)
    with pytest.raises(StoreError, match=f"over {ID_CHARS} characters cannot be stored"):
        store.rollouts.set_windows("s1", ["mon 10:00-11:00", LONG])
    with pytest.raises(StoreError, match=f"over {ID_CHARS} characters cannot be stored"):
        store.rollouts.set_windows(LONG, [])
    assert [r.rollout_id for r in store.rollouts.list_rollouts(RolloutQuery())] == [rollout_id]
    assert store.rollouts.windows() == {}
    # An id no host can have is in no rollout, no school, no room, no lesson.
    assert store.rollouts.rollout_host(rollout_id, LONG) is None
    assert store.rollouts.windows([LONG]) == {}
    assert store.rollouts.busy_rooms([(LONG, LONG)], T0, T0 + 60) == {}
    assert store.rollouts.lesson_rates([LONG], T0, T0 + 60) == NONE


def test_a_nul_is_refused_in_what_must_read_back_and_written_out_elsewhere(
    store: Stores,
) -> None:
    for spec, by, hosts in (
        (replace(SPEC, playbook="a\x00.yml"), "ana", _hosts("d1")),
        (replace(SPEC, selector="school=s\x00"), "ana", _hosts("d1")),
        (SPEC, "an\x00a", _hosts("d1")),
        (SPEC, "ana", _hosts("d1", "d\x00")),
        (SPEC, "ana", _hosts("d1", school="s\x00")),
    ):
        with pytest.raises(StoreError, match="a NUL character cannot be stored") as refused:
            store.rollouts.create_rollout(spec, hosts, by, T0, NONE)
        assert "\n" not in str(refused.value) and "\x00" not in str(refused.value)
    assert store.rollouts.list_rollouts(RolloutQuery()) == []

    spec = replace(SPEC, extra_vars={"k\x00": "v\x00"})
    rollout_id = store.rollouts.create_rollout(spec, _hosts("d1", "d2"), "ana", T0, NONE)
    store.rollouts.set_waiting(rollout_id, "room s1/r\x00 busy", T0 + 1)
    # A result for a device id no host can have does not fail the others'.
    store.rollouts.start_wave(rollout_id, 1, ["d1", "d2", "d\x00"], T0 + 2)
    results = [
        HostResult("d1", "s1", 1, HostOutcome.FAILED, "t\x00", "m\x00", stdout="o\x00"),
        HostResult("d\x00", "s1", 1, HostOutcome.FAILED),
        HostResult("d2", "s1", 1, HostOutcome.OK, detail='{"k": "\\u0000"}'),
    ]
    store.rollouts.finish_wave(rollout_id, 1, results, T0 + 3)
    record = store.rollouts.set_rollout_state(rollout_id, RolloutState.HALTED, "by \x00", T0 + 4)
    assert record is not None
    assert (record.spec, record.waiting, record.reason) == (spec, "room s1/r\\x00 busy", "by \\x00")
    assert record.waves == (WaveRecord(1, 2, T0 + 2, T0 + 3, 1),)
    kept = store.rollouts.rollout_host(rollout_id, "d1")
    assert kept is not None
    assert (kept.task, kept.message, kept.stdout) == ("t\\x00", "m\\x00", "o\\x00")
    detail = store.rollouts.rollout_host(rollout_id, "d2")
    assert detail is not None and detail.detail == '{"k": "\\u0000"}'
    assert store.rollouts.rollout_host(rollout_id, "d\x00") is None

    with pytest.raises(StoreError, match="a NUL character cannot be stored"):
        store.rollouts.set_windows("s1", ["mon 10:00-11:00", "tue\x00"])
    with pytest.raises(StoreError, match="a NUL character cannot be stored"):
        store.rollouts.set_windows("s\x00", [])
    assert store.rollouts.windows(["s\x00"]) == {}
    assert store.rollouts.busy_rooms([("s1", "r\x00")], T0, T0 + 60) == {}
    assert store.rollouts.lesson_rates(["d1", "d\x00"], T0, T0 + 60) == NONE
    assert store.rollouts.list_rollouts(RolloutQuery(schools=frozenset({"s1", "s\x00"})))
    assert store.rollouts.windows() == {}


def test_a_host_given_twice_is_refused(store: Stores) -> None:
    with pytest.raises(StoreError, match="rollout host 'd1' is given twice"):
        store.rollouts.create_rollout(SPEC, _hosts("d1", "d2", "d1"), "ana", T0, NONE)
    assert store.rollouts.list_rollouts(RolloutQuery()) == []


def test_text_is_ordered_by_code_point(store: Stores) -> None:
    ids = ["b", "a", "B", "a-2", "a.1", "Z9", "é", "_"]
    rollout_id = store.rollouts.create_rollout(SPEC, _hosts(*ids), "ana", T0, NONE)
    store.rollouts.start_wave(rollout_id, 1, ["b", "B"], T0 + 1)
    assert [h.device_id for h in store.rollouts.rollout_hosts(rollout_id)] == [
        "B",
        "b",
        "Z9",
        "_",
        "a",
        "a-2",
        "a.1",
        "é",
    ]
    store.rollouts.set_windows("s-b", ["sat 00:00-24:00", "Mon 10:00-11:00", "mon-fri 18:00"])
    store.rollouts.set_windows("S", ["x"])
    assert list(store.rollouts.windows().items()) == [
        ("S", ["x"]),
        ("s-b", ["Mon 10:00-11:00", "mon-fri 18:00", "sat 00:00-24:00"]),
    ]


def test_times_are_kept_to_the_microsecond(store: Stores) -> None:
    rollout_id = store.rollouts.create_rollout(SPEC, _hosts("d1"), "ana", T0, LessonRates(7, 2))
    store.rollouts.start_wave(rollout_id, 1, ["d1"], T0 + 0.000001)
    store.rollouts.finish_wave(
        rollout_id, 1, [HostResult("d1", "s1", 1, HostOutcome.OK, finished_at=T0 + 1)], T0 + 2
    )
    record = store.rollouts.get_rollout(rollout_id)
    assert record is not None
    assert (record.created_at, record.baseline) == (T0, LessonRates(7, 2))
    assert record.waves == (WaveRecord(1, 1, T0 + 0.000001, T0 + 2, 0),)
    [host] = store.rollouts.rollout_hosts(rollout_id)
    assert (host.started_at, host.finished_at) == (T0 + 0.000001, T0 + 1)


def test_lists_limit_and_counts(store: Stores) -> None:
    first = store.rollouts.create_rollout(SPEC, _hosts("a1", "a2", "a3"), "ana", T0, NONE)
    second = store.rollouts.create_rollout(SPEC, _hosts("b1"), "ana", T0, NONE)
    store.rollouts.start_wave(first, 1, ["a1", "a2"], T0 + 1)
    store.rollouts.start_wave(first, 2, ["a3"], T0 + 2)

    def ids(**query: Any) -> list[int]:
        return [r.rollout_id for r in store.rollouts.list_rollouts(RolloutQuery(**query))]

    # Equal times: the newer id first.
    assert ids() == [second, first]
    assert ids(limit=1) == [second]
    assert ids(limit=0) == []
    assert ids(limit=-1) == []
    assert ids(states=frozenset()) == []
    assert ids(schools=frozenset()) == []
    [_, listed] = store.rollouts.list_rollouts(RolloutQuery())
    assert listed.rollout_id == first
    assert [w.wave for w in listed.waves] == [1, 2]
    assert {o: n for o, n in listed.counts.items() if n} == {HostOutcome.RUNNING: 3}
    assert store.rollouts.rollout_hosts(first, frozenset()) == []


def test_a_wave_starts_once(store: Stores) -> None:
    rollout_id = store.rollouts.create_rollout(SPEC, _hosts("d1", "d2", "d3"), "ana", T0, NONE)
    store.rollouts.start_wave(rollout_id, 1, ["d1", "d2", "d1", "d9"], T0 + 1)
    with pytest.raises(StoreError, match=f"rollout {rollout_id}: wave 1 was started already"):
        store.rollouts.start_wave(rollout_id, 1, ["d3"], T0 + 2)
    assert _wave_of(store, rollout_id, 1) == WaveRecord(1, 2, T0 + 1, None)
    assert [(h.device_id, h.outcome) for h in store.rollouts.rollout_hosts(rollout_id)] == [
        ("d1", HostOutcome.RUNNING),
        ("d2", HostOutcome.RUNNING),
        ("d3", HostOutcome.PENDING),
    ]


def _lesson(
    store: Stores, lesson_id: str, school: str, room: str, start: float, end: float
) -> None:
    store.sql.write(
        "INSERT INTO lessons (lesson_id, school_id, room_id, starts_at, ends_at, class_name, "
        "subject, teacher, content_url, remote, updated_at) "
        "VALUES (?, ?, ?, ?, ?, '7B', 'maths', 'T', 'https://x/l', 0, ?)",
        (lesson_id, school, room, start, end, start),
    )


def _panel(store: Stores, lesson_id: str, device: str, launched: bool, failed: bool) -> None:
    store.sql.write(
        "INSERT INTO lesson_panels (lesson_id, device_id, command_id, launched_at, "
        "failed_reason) VALUES (?, ?, ?, ?, ?)",
        (
            lesson_id,
            device,
            f"{lesson_id}:{device}",
            T0 if launched else None,
            "crashed" if failed else None,
        ),
    )


def test_busy_rooms_are_only_the_rooms_asked_about(store: Stores) -> None:
    _lesson(store, "a", "s1", "r1", T0, T0 + 2700)
    _lesson(store, "b", "s1", "r2", T0, T0 + 1800)
    _lesson(store, "c", "s2", "r1", T0 + 600, T0 + 1200)
    _lesson(store, "d", "s2", "r2", T0 - 86400, T0 - 86400 + 2700)
    asked = [("s1", "r1"), ("s2", "r2"), ("s2", "r1"), ("s1", "r1")]
    # s1/r2 has a lesson then too, but was not asked about.
    assert store.rollouts.busy_rooms(asked, T0, T0 + 3600) == {
        ("s1", "r1"): T0 + 2700,
        ("s2", "r1"): T0 + 1200,
    }
    assert store.rollouts.busy_rooms(asked, T0 + 1200, T0 + 3600) == {("s1", "r1"): T0 + 2700}
    assert store.rollouts.busy_rooms([], T0, T0 + 3600) == {}


def test_lesson_rates_count_each_panel_of_each_lesson(store: Stores) -> None:
    _lesson(store, "a", "s1", "r1", T0, T0 + 2700)
    _lesson(store, "b", "s1", "r1", T0 + 3600, T0 + 6300)
    _panel(store, "a", "p1", launched=True, failed=False)
    _panel(store, "a", "p2", launched=True, failed=True)
    _panel(store, "b", "p1", launched=False, failed=False)
    _panel(store, "b", "p2", launched=True, failed=False)
    assert store.rollouts.lesson_rates(["p1", "p2", "p9"], T0, T0 + 3601) == LessonRates(4, 2)
    assert store.rollouts.lesson_rates(["p1"], T0, T0 + 3600) == LessonRates(1, 0)
    assert store.rollouts.lesson_rates(["p2"], T0, T0 + 1) == LessonRates(1, 1)
    assert store.rollouts.lesson_rates([], T0, T0 + 3601) == NONE


# Controllers racing on one PostgreSQL database.


@pytest.fixture
def two(pg_url: str) -> Iterator[tuple[Stores, Stores]]:
    """Two controllers' stores on the same database."""
    first = open_stores(pg_url)
    second = open_stores(pg_url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def _waiting_for_a_lock(pg_url: str) -> None:
    """Returns once a session of the database waits for a lock."""
    deadline = time.monotonic() + 10
    with psycopg.connect(pg_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.01)
    pytest.fail("no session waited for the lock")


def test_racing_rollouts_claim_each_host_once(two: tuple[Stores, Stores]) -> None:
    a, b = two
    every_winner: set[int] = set()
    for n in range(10):
        # Overlapping, in opposite orders: no deadlock, one of them wins every host.
        mine = [f"r{n}-d{i}" for i in range(50)]
        results = at_once(
            partial(a.rollouts.create_rollout, SPEC, _hosts(*mine), "ana", T0, NONE),
            partial(b.rollouts.create_rollout, SPEC, _hosts(*mine[::-1]), "bo", T0, NONE),
            partial(b.rollouts.create_rollout, SPEC, _hosts(mine[7], f"r{n}-x"), "cy", T0, NONE),
        )
        # Each pair shares a host: one wins, the others are refused (not failed).
        won = [r for r in results if isinstance(r, int)]
        lost = [r for r in results if isinstance(r, HostsClaimed)]
        assert (len(won), len(lost)) == (1, 2), results
        every_winner.update(won)
        held = a.sql.read("SELECT device_id, rollout_id FROM rollout_claims")
        claims = {r["device_id"]: r["rollout_id"] for r in held}
        assert set(claims.values()) == set(won)
        for rollout_id in won:
            hosts = {h.device_id for h in a.rollouts.rollout_hosts(rollout_id)}
            assert {claims[d] for d in hosts} == {rollout_id}
        for refused in lost:
            assert set(refused.claims.values()) == set(won)
        stored = {r.rollout_id for r in a.rollouts.list_rollouts(RolloutQuery())}
        assert stored == every_winner, "a refused rollout left nothing"
        for rollout_id in won:
            a.rollouts.set_rollout_state(rollout_id, RolloutState.DONE, "", T0)


def test_a_claim_taken_meanwhile_refuses_the_rollout(
    pg_url: str, two: tuple[Stores, Stores]
) -> None:
    a, b = two
    # Another controller's create, caught between its claims and its commit: b's read
    # of the claims finds none, and its own claim of d2 must wait for the other's end.
    for other_ends, refused_by in (("commit", {"d2": 999}), ("rollback", None)):
        with psycopg.connect(pg_url) as other, ThreadPoolExecutor(1) as pool:
            other.execute("INSERT INTO rollout_claims (device_id, rollout_id) VALUES ('d2', 999)")
            hosts = _hosts("d1", "d2", "d3")
            racing = pool.submit(b.rollouts.create_rollout, SPEC, hosts, "bo", T0, NONE)
            _waiting_for_a_lock(pg_url)
            getattr(other, other_ends)()
            if refused_by is None:
                rollout_id = racing.result(timeout=10)
            else:
                with pytest.raises(HostsClaimed) as refused:
                    racing.result(timeout=10)
                assert refused.value.claims == refused_by
                # Nothing of the refused rollout was kept; the other's claim stays.
                assert a.rollouts.list_rollouts(RolloutQuery()) == []
                a.sql.write("DELETE FROM rollout_claims")
    # When the other's transaction failed, the hosts were free after all.
    held = a.sql.read("SELECT device_id, rollout_id FROM rollout_claims ORDER BY device_id")
    assert [(r["device_id"], r["rollout_id"]) for r in held] == [
        ("d1", rollout_id),
        ("d2", rollout_id),
        ("d3", rollout_id),
    ]


def test_a_waves_failed_count_is_exact_when_two_close_itat_once(
    pg_url: str, two: tuple[Stores, Stores]
) -> None:
    a, b = two
    ids = [f"d{i:03d}" for i in range(200)]
    rollout_id = a.rollouts.create_rollout(SPEC, _hosts(*ids), "ana", T0, NONE)
    a.rollouts.start_wave(rollout_id, 1, ids, T0 + 1)

    def results(part: list[str]) -> list[HostResult]:
        bad = (HostOutcome.FAILED, HostOutcome.UNREACHABLE, HostOutcome.OK)
        return [HostResult(d, "s1", 1, bad[int(d[1:]) % 3]) for d in part]

    # Another controller's close of the same wave, caught half way: its hosts are
    # written, not committed. b's close waits for it and counts its hosts too.
    with psycopg.connect(pg_url) as other, ThreadPoolExecutor(1) as pool:
        other.execute(
            "SELECT wave FROM rollout_waves WHERE rollout_id = %s AND wave = 1 FOR UPDATE",
            (rollout_id,),
        )
        other.execute(
            "UPDATE rollout_hosts SET outcome = 'failed' "
            "WHERE rollout_id = %s AND device_id < 'd100'",
            (rollout_id,),
        )
        closing = pool.submit(b.rollouts.finish_wave, rollout_id, 1, results(ids[100:]), T0 + 2)
        _waiting_for_a_lock(pg_url)
        other.commit()
        closing.result(timeout=10)
    # d100..d199: 33 failed, 34 unreachable; d000..d099: 100 failed.
    assert _wave_of(a, rollout_id, 1) == WaveRecord(1, 200, T0 + 1, T0 + 2, 167)

    # And the two halves closed by the two controllers at once, again and again.
    for n in range(2, 12):
        a.sql.write(
            "UPDATE rollout_hosts SET outcome = 'pending', wave = NULL WHERE rollout_id = ?",
            (rollout_id,),
        )
        a.rollouts.start_wave(rollout_id, n, ids, T0 + n)
        halves = [replace(r, wave=n) for r in results(ids)]
        at_once(
            partial(a.rollouts.finish_wave, rollout_id, n, halves[::2], T0 + n + 0.5),
            partial(b.rollouts.finish_wave, rollout_id, n, halves[1::2], T0 + n + 0.5),
        )
        expected = sum(r.outcome.bad for r in halves)
        assert _wave_of(a, rollout_id, n).failed == expected == 134


def test_a_wave_is_started_by_one_controller(two: tuple[Stores, Stores]) -> None:
    a, b = two
    ids = [f"d{i:03d}" for i in range(100)]
    rollout_id = a.rollouts.create_rollout(SPEC, _hosts(*ids), "ana", T0, NONE)
    for n in range(1, 11):
        part = ids[(n - 1) * 10 : n * 10]
        outcomes = at_once(
            partial(a.rollouts.start_wave, rollout_id, n, part, T0 + n),
            partial(b.rollouts.start_wave, rollout_id, n, part, T0 + n),
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "StoreError"]
        assert _wave_of(a, rollout_id, n) == WaveRecord(n, 10, T0 + n, None)
    running = a.rollouts.rollout_hosts(rollout_id, frozenset({HostOutcome.RUNNING}))
    assert [(h.device_id, h.wave) for h in running] == [(d, i // 10 + 1) for i, d in enumerate(ids)]


def test_a_rollout_ends_once(two: tuple[Stores, Stores]) -> None:
    a, b = two
    for n in range(10):
        hosts = [f"r{n}-d{i}" for i in range(30)]
        rollout_id = a.rollouts.create_rollout(SPEC, _hosts(*hosts), "ana", T0, NONE)
        a.rollouts.start_wave(rollout_id, 1, hosts[:10], T0 + 1)
        # A controller runs the wave's slice.
        assert a.slices.claim_slice("a", 60) is not None
        records = at_once(
            partial(
                a.rollouts.set_rollout_state, rollout_id, RolloutState.HALTED, "budget", T0 + 2
            ),
            partial(
                b.rollouts.set_rollout_state, rollout_id, RolloutState.ABORTED, "by bo", T0 + 3
            ),
            partial(
                b.rollouts.set_rollout_state, rollout_id, RolloutState.PAUSED, "paused", T0 + 4
            ),
        )
        final = a.rollouts.get_rollout(rollout_id)
        assert final is not None and final.state in (RolloutState.HALTED, RolloutState.ABORTED)
        # Each caller sees the rollout as it ended, whoever ended it.
        assert records[0] == records[1] == final
        assert (final.reason, final.finished_at) == {
            RolloutState.HALTED: ("budget", T0 + 2),
            RolloutState.ABORTED: ("by bo", T0 + 3),
        }[final.state]
        assert {o: c for o, c in final.counts.items() if c} == {
            HostOutcome.INTERRUPTED: 10,
            HostOutcome.CANCELLED: 20,
        }
        assert final.waves == (WaveRecord(1, 10, T0 + 1, final.finished_at),)
        claims = a.sql.read("SELECT count(*) AS n FROM rollout_claims")
        assert claims[0]["n"] == 0


def test_windows_replaced_at_once_are_one_or_the_other(two: tuple[Stores, Stores]) -> None:
    a, b = two
    mine, theirs = ["mon 10:00-11:00", "tue 10:00-11:00"], ["wed 10:00-11:00"]
    for n in range(20):
        a.rollouts.set_windows("s1", ["sun 00:00-24:00"] if n % 2 else [])
        at_once(
            partial(a.rollouts.set_windows, "s1", mine),
            partial(b.rollouts.set_windows, "s1", theirs),
        )
        found = a.rollouts.windows()
        assert found in ({"s1": mine}, {"s1": theirs}), found
