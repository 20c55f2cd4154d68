"""Rollouts in the store, on SQLite and PostgreSQL alike: claims, waves, ends, windows
and the lesson schedule (tests/test_rollouts_store_contract.py has the hostile values
and the races)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controller.errors import HostsClaimed
from controller.lessons.store import OutboxCommand
from controller.rollouts.store import NewHost, RolloutQuery
from controller.store.rows import LessonEventRow
from controller.stores import Stores, sqlite_stores
from inventory.lessons import EventKind, FailReason, Lesson, LessonEvent
from inventory.model import DeviceIdentity, DeviceKind
from inventory.rollouts import (
    Amount,
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutSpec,
    RolloutState,
    WaveRecord,
)

T0 = 1_800_000_000.0
SPEC = RolloutSpec(
    playbook="update-browser.yml",
    selector="school=s1|s2,kind=panel",
    canary=Amount(2, False),
    wave_size=Amount(25.0, True),
    max_fail=7.5,
    extra_vars={"version": "121.0", "mirrors": ["a", "b"]},
    gate_lessons=True,
)


def hosts(*device_ids: str, school: str = "s1") -> list[NewHost]:
    return [NewHost(d, school) for d in device_ids]


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Stores]:
    """For the tests that write the schedule through the lessons' and devices' stores,
    each with its own contract suite."""
    s = sqlite_stores(tmp_path / "c.db")
    yield s
    s.close()


def test_a_rollout_reads_back_as_it_was_created(store: Stores) -> None:
    new = [*hosts("d2", "d1"), *hosts("d3", school="s2")]
    rollout_id = store.rollouts.create_rollout(SPEC, new, "ana", T0, LessonRates(40, 3))
    record = store.rollouts.get_rollout(rollout_id)
    assert record is not None
    assert (record.spec, record.state, record.created_by) == (SPEC, RolloutState.RUNNING, "ana")
    assert (record.created_at, record.updated_at, record.finished_at) == (T0, T0, None)
    assert record.counts == {o: (3 if o is HostOutcome.PENDING else 0) for o in HostOutcome}
    assert (record.total, record.waves, record.baseline) == (3, (), LessonRates(40, 3))
    assert store.rollouts.rollout_schools(rollout_id) == {"s1", "s2"}
    assert store.rollouts.rollout_hosts(rollout_id) == [
        HostResult("d1", "s1", None, HostOutcome.PENDING),
        HostResult("d2", "s1", None, HostOutcome.PENDING),
        HostResult("d3", "s2", None, HostOutcome.PENDING),
    ]
    assert store.rollouts.get_rollout(rollout_id + 1) is None


def test_a_percentage_with_many_digits_is_kept_whole(store: Stores) -> None:
    spec = replace(SPEC, canary=Amount(100 / 3, True), wave_size=Amount(12.5, True))
    record = store.rollouts.get_rollout(
        store.rollouts.create_rollout(spec, hosts("d1"), "ana", T0, LessonRates(0, 0))
    )
    assert record is not None
    assert record.spec == spec


def test_lists_newest_first_by_state_and_school(store: Stores) -> None:
    none = LessonRates(0, 0)
    first = store.rollouts.create_rollout(SPEC, hosts("a1"), "ana", T0, none)
    second = store.rollouts.create_rollout(SPEC, hosts("b1", school="s2"), "ana", T0 + 1, none)
    third = store.rollouts.create_rollout(
        SPEC, [*hosts("a2"), *hosts("c1", school="s3")], "bo", T0 + 2, none
    )
    store.rollouts.set_rollout_state(second, RolloutState.DONE, "", T0 + 3)

    def ids(query: RolloutQuery) -> list[int]:
        return [r.rollout_id for r in store.rollouts.list_rollouts(query)]

    assert ids(RolloutQuery()) == [third, second, first]
    assert ids(RolloutQuery(limit=2)) == [third, second]
    assert ids(RolloutQuery(states=frozenset({RolloutState.RUNNING}))) == [third, first]
    assert ids(RolloutQuery(states=frozenset({RolloutState.DONE}))) == [second]
    # Only rollouts all of whose schools are in the query's (a caller's scope).
    assert ids(RolloutQuery(schools=frozenset({"s1"}))) == [first]
    assert ids(RolloutQuery(schools=frozenset({"s2", "s3"}))) == [second]
    assert ids(RolloutQuery(schools=frozenset({"s1", "s3"}))) == [third, first]
    assert ids(RolloutQuery(schools=frozenset({"s9"}))) == []
    both = RolloutQuery(states=frozenset({RolloutState.RUNNING}), schools=frozenset({"s2"}))
    assert ids(both) == []
    [listed] = store.rollouts.list_rollouts(RolloutQuery(schools=frozenset({"s1", "s3"}), limit=1))
    assert listed == store.rollouts.get_rollout(third)


def test_a_host_is_in_one_unfinished_rollout_at_a_time(store: Stores) -> None:
    none = LessonRates(0, 0)
    first = store.rollouts.create_rollout(SPEC, hosts("d1", "d2", "d3"), "ana", T0, none)
    with pytest.raises(HostsClaimed) as refused:
        store.rollouts.create_rollout(SPEC, hosts("d3", "d4", "d2"), "bo", T0 + 1, none)
    assert refused.value.claims == {"d2": first, "d3": first}
    assert str(refused.value) == f"d2 and 1 more already in rollout {first}"
    assert [r.rollout_id for r in store.rollouts.list_rollouts(RolloutQuery())] == [first]
    # Nothing of the refused rollout was kept: d4 is free.
    fourth = store.rollouts.create_rollout(SPEC, hosts("d4"), "bo", T0 + 2, none)
    store.rollouts.set_rollout_state(fourth, RolloutState.ABORTED, "", T0 + 3)

    store.rollouts.set_rollout_state(first, RolloutState.PAUSED, "lunch", T0 + 4)
    with pytest.raises(HostsClaimed):
        store.rollouts.create_rollout(SPEC, hosts("d1"), "bo", T0 + 5, none)
    store.rollouts.set_rollout_state(first, RolloutState.RUNNING, "", T0 + 6)
    store.rollouts.set_rollout_state(first, RolloutState.DONE, "", T0 + 7)
    again = store.rollouts.create_rollout(SPEC, hosts("d3", "d4", "d2"), "bo", T0 + 8, none)
    assert {h.device_id for h in store.rollouts.rollout_hosts(again)} == {"d2", "d3", "d4"}


def test_waves_record_what_each_host_did(store: Stores) -> None:
    rollout_id = store.rollouts.create_rollout(
        SPEC, hosts("d1", "d2", "d3", "d4"), "ana", T0, LessonRates(0, 0)
    )
    store.rollouts.start_wave(rollout_id, 0, ["d3"], T0 + 10)
    running = store.rollouts.get_rollout(rollout_id)
    assert running is not None
    assert running.waves == (WaveRecord(0, 1, T0 + 10, None),)
    assert (running.counts[HostOutcome.RUNNING], running.counts[HostOutcome.PENDING]) == (1, 3)
    store.rollouts.finish_wave(
        rollout_id, 0, [HostResult("d3", "s1", 0, HostOutcome.CHANGED)], T0 + 20
    )

    store.rollouts.start_wave(rollout_id, 1, ["d1", "d2"], T0 + 30)
    failed = HostResult("d2", "s1", 1, HostOutcome.FAILED, "apt: install", "no space", T0 + 30)
    results = [
        HostResult(
            "d1", "s1", 1, HostOutcome.UNREACHABLE, "", "ssh: timed out", finished_at=T0 + 35
        ),
        failed,
    ]
    store.rollouts.finish_wave(rollout_id, 1, results, T0 + 40)

    record = store.rollouts.get_rollout(rollout_id)
    assert record is not None
    assert record.waves == (
        WaveRecord(0, 1, T0 + 10, T0 + 20, 0),
        WaveRecord(1, 2, T0 + 30, T0 + 40, 2),
    )
    assert {o: n for o, n in record.counts.items() if n} == {
        HostOutcome.CHANGED: 1,
        HostOutcome.FAILED: 1,
        HostOutcome.UNREACHABLE: 1,
        HostOutcome.PENDING: 1,
    }
    # By wave, then device id; the pending host last.
    assert [(h.device_id, h.wave) for h in store.rollouts.rollout_hosts(rollout_id)] == [
        ("d3", 0),
        ("d1", 1),
        ("d2", 1),
        ("d4", None),
    ]
    bad = frozenset({HostOutcome.FAILED, HostOutcome.UNREACHABLE})
    assert store.rollouts.rollout_hosts(rollout_id, bad) == [
        HostResult("d1", "s1", 1, HostOutcome.UNREACHABLE, "", "ssh: timed out", T0 + 30, T0 + 35),
        HostResult("d2", "s1", 1, HostOutcome.FAILED, "apt: install", "no space", T0 + 30, T0 + 40),
    ]


def test_an_end_cancels_the_hosts_left_and_closes_the_wave(store: Stores) -> None:
    rollout_id = store.rollouts.create_rollout(
        SPEC, hosts("d1", "d2", "d3"), "ana", T0, LessonRates(0, 0)
    )
    store.rollouts.start_wave(rollout_id, 0, ["d1"], T0 + 10)
    # A controller runs the canary's slice.
    assert store.slices.claim_slice("a", 60) is not None
    record = store.rollouts.set_rollout_state(
        rollout_id, RolloutState.HALTED, "canary failed", T0 + 20
    )
    assert record is not None
    assert (record.state, record.reason, record.finished_at) == (
        RolloutState.HALTED,
        "canary failed",
        T0 + 20,
    )
    # The running host was stopped half way; the pending ones were never touched.
    assert {o: n for o, n in record.counts.items() if n} == {
        HostOutcome.INTERRUPTED: 1,
        HostOutcome.CANCELLED: 2,
    }
    assert [h.outcome for h in store.rollouts.rollout_hosts(rollout_id)] == [
        HostOutcome.INTERRUPTED,
        HostOutcome.CANCELLED,
        HostOutcome.CANCELLED,
    ]
    assert record.waves == (WaveRecord(0, 1, T0 + 10, T0 + 20),)
    assert {h.finished_at for h in store.rollouts.rollout_hosts(rollout_id)} == {T0 + 20}
    # A final rollout stays as it ended: its claims are gone.
    again = store.rollouts.set_rollout_state(rollout_id, RolloutState.RUNNING, "", T0 + 30)
    assert again is not None
    assert (again.state, again.updated_at) == (RolloutState.HALTED, T0 + 20)
    assert store.rollouts.set_rollout_state(rollout_id + 1, RolloutState.ABORTED, "", T0) is None


def test_a_hosts_whole_result_is_kept_bounded_and_escaped(store: Stores) -> None:
    rollout_id = store.rollouts.create_rollout(
        SPEC, hosts("d1", "d2"), "ana", T0, LessonRates(0, 0)
    )
    store.rollouts.start_wave(rollout_id, 1, ["d1", "d2"], T0 + 10)
    detail = json.dumps({"tasks": [{"task": "apt", "status": "failed"}], "result": {"rc": 100}})
    failed = HostResult(
        "d1",
        "s1",
        1,
        HostOutcome.FAILED,
        "apt: install",
        "non-zero return code\x1b[2J",
        rc=100,
        # What a worker could send: far too long, with a terminal escape in it.
        stdout="\n".join(f"line {n}" for n in range(5000)),
        stderr="E: no space left\x1b]0;owned\x07\n",
        detail=detail,
    )
    store.rollouts.finish_wave(
        rollout_id, 1, [failed, HostResult("d2", "s1", 1, HostOutcome.OK)], T0 + 20
    )
    kept = store.rollouts.rollout_host(rollout_id, "d1")
    assert kept is not None
    assert (kept.outcome, kept.task, kept.rc) == (HostOutcome.FAILED, "apt: install", 100)
    assert kept.message == "non-zero return code\\x1b[2J"
    assert kept.stdout.splitlines() == [f"line {n}" for n in range(4980, 5000)]
    assert kept.stderr == "E: no space left\\x1b]0;owned\\x07"
    assert json.loads(kept.detail) == json.loads(detail)
    # Lists leave the detail out; one host's view has it.
    assert [h.detail for h in store.rollouts.rollout_hosts(rollout_id)] == ["", ""]
    assert store.rollouts.rollout_hosts(rollout_id)[0].rc == 100
    assert store.rollouts.rollout_host(rollout_id, "d9") is None
    assert store.rollouts.rollout_host(rollout_id + 1, "d1") is None


def test_a_detail_too_big_or_not_json_is_not_kept(store: Stores) -> None:
    rollout_id = store.rollouts.create_rollout(
        SPEC, hosts("d1", "d2"), "ana", T0, LessonRates(0, 0)
    )
    store.rollouts.start_wave(rollout_id, 1, ["d1", "d2"], T0 + 10)
    results = [
        HostResult("d1", "s1", 1, HostOutcome.FAILED, detail="x" * 100_000),
        HostResult("d2", "s1", 1, HostOutcome.FAILED, detail="[1, 2]"),
    ]
    store.rollouts.finish_wave(rollout_id, 1, results, T0 + 20)
    big, odd = (store.rollouts.rollout_host(rollout_id, d) for d in ("d1", "d2"))
    assert big is not None and odd is not None
    assert "over 16384 bytes" in json.loads(big.detail)["left_out"]
    assert json.loads(odd.detail) == {"left_out": "the detail was not a JSON object"}


def test_a_pause_keeps_the_hosts_as_they_are(store: Stores) -> None:
    rollout_id = store.rollouts.create_rollout(
        SPEC, hosts("d1", "d2"), "ana", T0, LessonRates(0, 0)
    )
    store.rollouts.start_wave(rollout_id, 0, ["d1"], T0 + 10)
    record = store.rollouts.set_rollout_state(rollout_id, RolloutState.PAUSED, "by ana", T0 + 20)
    assert record is not None
    assert (record.state, record.finished_at, record.updated_at) == (
        RolloutState.PAUSED,
        None,
        T0 + 20,
    )
    assert record.counts[HostOutcome.RUNNING] == record.counts[HostOutcome.PENDING] == 1
    store.rollouts.set_waiting(rollout_id, "room s1/r1 has a lesson until 10:45", T0 + 30)
    waiting = store.rollouts.get_rollout(rollout_id)
    assert waiting is not None
    assert (waiting.waiting, waiting.updated_at) == ("room s1/r1 has a lesson until 10:45", T0 + 30)


def test_a_wave_is_cut_into_even_slices_for_controllers_to_claim(store: Stores) -> None:
    ids = [f"d{n:02}" for n in range(1, 24)]
    rollout_id = store.rollouts.create_rollout(SPEC, hosts(*ids), "ana", T0, LessonRates(0, 0))
    store.rollouts.start_wave(rollout_id, 1, ids, T0 + 10, 10)
    claims = [store.slices.claim_slice("a", 60) for _ in range(4)]
    assert claims[3] is None
    assert [(c.slice, len(c.hosts)) for c in claims if c] == [(1, 8), (2, 8), (3, 7)]
    assert [h for c in claims if c for h, _ in c.hosts] == ids
    record = store.rollouts.get_rollout(rollout_id)
    assert record is not None and [(w.wave, w.hosts) for w in record.waves] == [(1, 23)]
    assert store.slices.unfinished_slices(rollout_id, 1) == 3


def test_maintenance_windows_are_replaced_whole(store: Stores) -> None:
    assert store.rollouts.windows() == {}
    store.rollouts.set_windows("s1", ["sat 00:00-24:00", "mon-fri 18:00-06:00"])
    store.rollouts.set_windows("s2", ["sun 08:00-20:00"])
    # In code point order (the admin API stores them sorted).
    assert store.rollouts.windows() == {
        "s1": ["mon-fri 18:00-06:00", "sat 00:00-24:00"],
        "s2": ["sun 08:00-20:00"],
    }
    assert store.rollouts.windows(["s2", "s9"]) == {"s2": ["sun 08:00-20:00"]}
    assert store.rollouts.windows([]) == {}
    store.rollouts.set_windows("s1", ["mon-fri 19:00-06:00"])
    assert store.rollouts.windows(["s1"]) == {"s1": ["mon-fri 19:00-06:00"]}
    store.rollouts.set_windows("s1", [])
    assert store.rollouts.windows() == {"s2": ["sun 08:00-20:00"]}


def lesson(room: str, start: float, minutes: int = 45) -> Lesson:
    return Lesson("s1", room, start, start + minutes * 60, "7B", "maths", "T", "https://x/l", False)


def test_busy_rooms_are_those_with_a_lesson_overlapping(sqlite_store: Stores) -> None:
    store = sqlite_store
    first, second = lesson("r1", T0), lesson("r1", T0 + 3600)
    store.lessons.save_lessons([first, second, lesson("r2", T0 + 600, 30)], T0 - 1000)
    rooms = [("s1", "r1"), ("s1", "r2"), ("s1", "r3")]
    end = first.ends_at
    assert store.rollouts.busy_rooms(rooms, T0 - 600, T0) == {}, "a lesson starting at until"
    assert store.rollouts.busy_rooms(rooms, end, end + 60) == {}, "a lesson ending at since"
    assert store.rollouts.busy_rooms(rooms, end - 1, end) == {("s1", "r1"): end}
    assert store.rollouts.busy_rooms(rooms, T0, T0 + 3601) == {
        ("s1", "r1"): second.ends_at,
        ("s1", "r2"): T0 + 600 + 1800,
    }
    assert store.rollouts.busy_rooms([("s1", "r2")], T0 - 60, T0 + 60) == {}
    assert store.rollouts.busy_rooms([], T0, T0 + 3601) == {}


def test_lesson_rates_count_each_panel_of_each_lesson(sqlite_store: Stores) -> None:
    store = sqlite_store
    for device_id in ("p1", "p2"):
        store.devices.device_connected(
            DeviceIdentity(device_id, DeviceKind.PANEL, "s1", "r1", "h", "1"), 1, 90, T0 - 100
        )
    a, b, later = lesson("r1", T0), lesson("r1", T0 + 3600), lesson("r1", T0 + 7200)
    store.lessons.save_lessons([a, b, later], T0 - 1000)
    store.lessons.dispatch(
        [
            (
                x.lesson_id,
                [
                    OutboxCommand(f"{x.lesson_id}:{d}", d, x.lesson_id, b"", x.ends_at)
                    for d in ("p1", "p2")
                ],
            )
            for x in (a, b, later)
        ],
        T0 - 60,
    )
    seq = {"p1": 0, "p2": 0}

    def said(x: Lesson, device: str, kind: EventKind, reason: FailReason | None = None) -> None:
        seq[device] += 1
        event = LessonEvent(x.lesson_id, device, "", kind, reason, "", x.starts_at)
        store.devices.record_messages([LessonEventRow(device, seq[device], x.starts_at, event)])

    said(a, "p1", EventKind.LAUNCHED)
    said(a, "p2", EventKind.LAUNCHED)
    said(a, "p2", EventKind.FAILED, FailReason.CRASHED)  # launched, then crashed
    said(b, "p1", EventKind.LAUNCHED)  # p2 never answered for b
    said(later, "p1", EventKind.FAILED, FailReason.NO_PROGRAM)

    assert store.rollouts.lesson_rates(["p1", "p2"], T0, T0 + 7200) == LessonRates(4, 2)
    assert store.rollouts.lesson_rates(["p1"], T0, T0 + 7200) == LessonRates(2, 0)
    assert store.rollouts.lesson_rates(["p2"], T0, T0 + 1) == LessonRates(1, 1)
    assert store.rollouts.lesson_rates(["p1", "p2", "p9"], T0, T0 + 7201) == LessonRates(6, 4)
    assert store.rollouts.lesson_rates([], T0, T0 + 7201) == LessonRates(0, 0)
    assert store.rollouts.lesson_rates(["p1"], T0 + 1, T0 + 3600) == LessonRates(0, 0)


def test_a_city_wide_rollout_of_20000_hosts(store: Stores) -> None:
    many = [NewHost(f"d{n:05d}", f"s{n % 40}") for n in range(20_000)]
    rollout_id = store.rollouts.create_rollout(SPEC, many, "ana", T0, LessonRates(0, 0))
    assert store.rollouts.list_rollouts(RolloutQuery(schools=frozenset({"s7"}))) == []
    every = frozenset(f"s{n}" for n in range(40))
    [record] = store.rollouts.list_rollouts(RolloutQuery(schools=every))
    assert (record.rollout_id, record.counts[HostOutcome.PENDING]) == (rollout_id, 20_000)
    assert len(store.rollouts.rollout_schools(rollout_id)) == 40

    with pytest.raises(HostsClaimed) as refused:
        store.rollouts.create_rollout(SPEC, many[::-1], "bo", T0 + 1, LessonRates(0, 0))
    assert len(refused.value.claims) == 20_000
    assert store.rollouts.lesson_rates([h.device_id for h in many], T0 - 86400, T0) == LessonRates(
        0, 0
    )

    wave = [h.device_id for h in many[:10_000]]
    store.rollouts.start_wave(rollout_id, 0, wave, T0 + 10)
    store.rollouts.finish_wave(
        rollout_id, 0, [HostResult(d, "", 0, HostOutcome.OK) for d in wave], T0 + 20
    )
    done = store.rollouts.set_rollout_state(rollout_id, RolloutState.DONE, "", T0 + 30)
    assert done is not None
    assert (done.counts[HostOutcome.OK], done.counts[HostOutcome.CANCELLED]) == (10_000, 10_000)
    assert len(store.rollouts.rollout_hosts(rollout_id)) == 20_000
    store.rollouts.create_rollout(SPEC, many, "bo", T0 + 40, LessonRates(0, 0))
