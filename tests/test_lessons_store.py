"""Lessons in the store and their outcome: import, dispatch, answers, settle, on SQLite
and on PostgreSQL (the contract's finer points: tests/test_lessons_store_contract.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from controller.lessons.outcome import outcome
from controller.lessons.store import ImportCounts, LessonQuery, OutboxCommand, PanelResult
from controller.store.rows import LessonEventRow, StoredLessonEvent
from controller.stores import Stores, sqlite_stores
from inventory.lessons import EventKind, FailReason, Lesson, LessonEvent, LessonState
from inventory.model import DeviceIdentity, DeviceKind

T0 = 1_800_000_000.0
DEVICES = (
    ("p1", DeviceKind.PANEL, "r1"),
    ("p2", DeviceKind.PANEL, "r1"),
    ("l1", DeviceKind.LAPTOP, "r1"),
    ("p3", DeviceKind.PANEL, "r2"),
)


def lesson(room: str = "r1", start: float = T0, minutes: int = 45, **kw: object) -> Lesson:
    base = Lesson("s1", room, start, start + minutes * 60, "7B", "maths", "T", "https://x/l", False)
    return replace(base, **kw)  # type: ignore[arg-type]


def add_device(stores: Stores, device_id: str, kind: DeviceKind, school: str, room: str) -> None:
    """A device as its first stream leaves it: its row and its room. Written here, not
    through the devices' store, so that these tests read only the lessons' store."""
    stores.sql.write(
        "INSERT INTO devices (device_id, kind, school_id, room_id, first_seen, offline_after) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (device_id, kind.value, school, room, T0 - 100, T0 - 10),
    )
    stores.sql.write(
        "INSERT INTO rooms (school_id, room_id) VALUES (?, ?) "
        "ON CONFLICT (school_id, room_id) DO NOTHING",
        (school, room),
    )


def record_events(stores: Stores, rows: Sequence[LessonEventRow]) -> list[StoredLessonEvent]:
    """The devices' batch as it stores lesson events: in one transaction, through it."""
    stored = []
    with stores.sql.transaction() as tx:
        for r in rows:
            found = stores.lessons.record_event_in_batch(tx, r)
            if found is not None:
                stored.append(found)
    return stored


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    for device_id, kind, room in DEVICES:
        add_device(both_stores, device_id, kind, "s1", room)
    return both_stores


def test_rooms_come_from_devices_and_can_be_added(store: Stores) -> None:
    assert store.lessons.known_rooms([("s1", "r1"), ("s1", "r2"), ("s1", "r3"), ("s2", "r1")]) == {
        ("s1", "r1"),
        ("s1", "r2"),
    }
    store.lessons.add_room("s1", "r3")
    assert ("s1", "r3") in store.lessons.known_rooms([("s1", "r3")])


def test_saving_the_same_lessons_again_changes_nothing(store: Stores) -> None:
    a, b = lesson(), lesson("r2")
    assert store.lessons.save_lessons([a, b], T0 - 1000) == ImportCounts(2, 0, 0, 0)
    assert store.lessons.save_lessons([a, b], T0 - 900) == ImportCounts(0, 0, 2, 0)
    moved = replace(a, content_url="https://x/other")
    assert store.lessons.save_lessons([moved], T0 - 800) == ImportCounts(0, 1, 0, 0)
    found = store.lessons.lessons_in_rooms([("s1", "r1")], T0, T0 + 1)
    assert found == {("s1", "r1"): [moved]}


def test_dispatch_once_with_a_command_per_panel_and_no_device_without(
    store: Stores,
) -> None:
    a, empty = lesson(), lesson("r9")
    store.lessons.add_room("s1", "r9")
    store.lessons.save_lessons([a, empty], T0 - 1000)
    assert store.lessons.due_lessons(T0 - 61, T0 - 61) == []
    assert [x.lesson_id for x in store.lessons.due_lessons(T0, T0 - 60)] == [
        a.lesson_id,
        empty.lesson_id,
    ]
    panels = store.lessons.panels_in_rooms([("s1", "r1"), ("s1", "r9")])
    assert panels == {("s1", "r1"): ["p1", "p2"]}, "laptops are not panels"
    commands = [
        OutboxCommand(f"launch:{a.lesson_id}:{d}", d, a.lesson_id, d.encode(), a.ends_at)
        for d in panels[("s1", "r1")]
    ]
    plan = [(a.lesson_id, commands), (empty.lesson_id, [])]
    assert store.lessons.dispatch(plan, T0 - 60) == [a.lesson_id, empty.lesson_id]
    assert store.lessons.dispatch(plan, T0 - 59) == [], "a second dispatch changes nothing"
    assert store.lessons.due_lessons(T0, T0 - 59) == []
    assert store.lessons.pending_commands("p1", T0) == [b"p1"]
    assert store.lessons.pending_commands("p1", a.ends_at) == [], "expired with the lesson"
    states = {r.lesson.room_id: (r.state, r.panels) for r in store.lessons.list_lessons(_today())}
    assert states == {"r1": (LessonState.DISPATCHED, 2), "r9": (LessonState.NO_DEVICE, 0)}
    # Once dispatched, the schedule may not move it.
    assert store.lessons.save_lessons([replace(a, teacher="U")], T0) == ImportCounts(0, 0, 0, 1)


def _today() -> LessonQuery:
    return LessonQuery(T0 - 86400, T0 + 86400)


def _event(device: str, seq: int, kind: EventKind, at: float, **kw: object) -> LessonEventRow:
    a = lesson()
    event = LessonEvent(a.lesson_id, device, f"launch:{a.lesson_id}:{device}", kind, None, "", at)
    return LessonEventRow(device, seq, at + 1, replace(event, **kw))  # type: ignore[arg-type]


def test_panel_answers_are_stored_once(store: Stores) -> None:
    a = lesson()
    store.lessons.save_lessons([a], T0 - 1000)
    commands = [
        OutboxCommand(f"launch:{a.lesson_id}:{d}", d, a.lesson_id, d.encode(), a.ends_at)
        for d in ("p1", "p2")
    ]
    store.lessons.dispatch([(a.lesson_id, commands)], T0 - 60)
    launched = _event("p1", 1, EventKind.LAUNCHED, T0 - 58)
    failed = _event("p2", 1, EventKind.FAILED, T0 - 57, reason=FailReason.URL_REFUSED)
    stored = record_events(store, [launched, failed])
    assert [(s.event.kind, s.school_id, s.starts_at) for s in stored] == [
        (EventKind.LAUNCHED, "s1", T0),
        (EventKind.FAILED, "s1", T0),
    ]
    assert record_events(store, [launched]) == [], "a replay is not stored again"
    # Offered again on a reconnect until the lesson ends: a restarted panel needs it.
    assert store.lessons.pending_commands("p1", T0) == [b"p1"]
    [(_, results)] = store.lessons.lessons_to_settle(a.ends_at + 1)
    assert results == [
        PanelResult("p1", T0 - 58, None),
        PanelResult("p2", None, "url-refused"),
    ]
    state, reason = outcome(a.starts_at, results, 60)
    store.lessons.settle(a.lesson_id, state, reason, a.ends_at + 1)
    [record] = store.lessons.list_lessons(_today())
    assert (record.state, record.launched, record.failed) == (LessonState.PARTLY_HELD, 1, 1)
    assert record.reason == "p2: url-refused"


@pytest.mark.parametrize(
    ("panels", "state", "reason"),
    [
        ([], LessonState.NO_DEVICE, "no panel in the room"),
        ([PanelResult("a", T0 - 5, None), PanelResult("b", T0 + 59, None)], LessonState.HELD, ""),
        ([PanelResult("a", T0 + 61, None)], LessonState.PARTLY_HELD, "a: late by 61s"),
        ([PanelResult("a", T0, "crashed")], LessonState.PARTLY_HELD, "a: crashed"),
        (
            [PanelResult("a", None, None), PanelResult("b", None, "no-network")],
            LessonState.FAILED,
            "not-reached on 1 of 2, no-network on 1 of 2",
        ),
    ],
)
def test_outcomes(panels: list[PanelResult], state: LessonState, reason: str) -> None:
    assert outcome(T0, panels, 60) == (state, reason)


def test_next_wake_is_the_earliest_due_thing(store: Stores) -> None:
    assert store.lessons.next_wake(60, 120) is None
    store.lessons.save_lessons([lesson(start=T0 + 600), lesson("r2", start=T0)], T0 - 1000)
    assert store.lessons.next_wake(60, 120) == T0 - 60


def test_todays_figures_per_school(store: Stores) -> None:
    # r1 (p1 launches, p2 is silent), r2 (p3 fails), and r1's later lesson not due yet.
    shown, unshown, later = lesson(), lesson("r2"), lesson(start=T0 + 3600)
    store.lessons.save_lessons([shown, unshown, later], T0 - 1000)
    plan = []
    for a in (shown, unshown, later):
        devices = ("p3",) if a.room_id == "r2" else ("p1", "p2")
        ids = [f"launch:{a.lesson_id}:{d}" for d in devices]
        plan.append(
            (
                a.lesson_id,
                [
                    OutboxCommand(i, d, a.lesson_id, b"", a.ends_at)
                    for i, d in zip(ids, devices, strict=True)
                ],
            )
        )
    store.lessons.dispatch(plan, T0 - 60)
    row = _event("p3", 1, EventKind.FAILED, T0 - 50, reason=FailReason.NO_PROGRAM)
    command = f"launch:{unshown.lesson_id}:p3"
    failed = replace(row, event=replace(row.event, lesson_id=unshown.lesson_id, command_id=command))
    record_events(store, [_event("p1", 1, EventKind.LAUNCHED, T0 - 55), failed])
    day = (T0 - 3600, T0 + 7200)
    # Before the on-time mark, the failed room is still starting; after it, not showing.
    assert sorted(store.lesson_counts.lessons_under_way(*day, due_before=T0 - 1)) == [
        ("s1", "showing", 1),
        ("s1", "starting", 2),
    ]
    assert sorted(store.lesson_counts.lessons_under_way(*day, due_before=T0 + 60)) == [
        ("s1", "not-showing", 1),
        ("s1", "showing", 1),
        ("s1", "starting", 1),
    ]
    assert sorted(store.lesson_counts.lesson_panel_counts(*day, due_before=T0 + 60)) == [
        ("s1", "launched", 1),
        ("s1", "no-program", 1),
        ("s1", "not-reached", 1),
        ("s1", "pending", 2),
    ]
    assert store.lesson_counts.lesson_day_spans(*day) == [("s1", T0, later.ends_at)]
    # Settled lessons are counted by state and leave the lessons under way.
    store.lessons.settle(unshown.lesson_id, LessonState.FAILED, "no-program on 1 of 1", T0 + 2800)
    assert sorted(store.lesson_counts.lesson_counts(*day)) == [
        ("s1", LessonState.DISPATCHED, 2),
        ("s1", LessonState.FAILED, 1),
    ]
    assert ("s1", "not-showing", 1) not in store.lesson_counts.lessons_under_way(
        *day, due_before=T0 + 60
    )


def test_every_known_school_from_inventory_devices_and_lessons(store: Stores) -> None:
    store.lessons.save_lessons([lesson(school_id="s7")], T0)
    assert store.infra.school_ids() == ["s1", "s7"]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Stores]:
    s = sqlite_stores(tmp_path / "c.db")
    for device_id, kind, room in DEVICES:
        identity = DeviceIdentity(device_id, kind, "s1", room, "h", "1")
        s.devices.device_connected(identity, 1, 90, T0 - 100)
    yield s
    s.close()


def test_panel_answers_come_through_the_devices_batch(sqlite_store: Stores) -> None:
    store = sqlite_store
    a = lesson()
    store.lessons.save_lessons([a], T0 - 1000)
    command = OutboxCommand(f"launch:{a.lesson_id}:p1", "p1", a.lesson_id, b"p1", a.ends_at)
    store.lessons.dispatch([(a.lesson_id, [command])], T0 - 60)
    launched = _event("p1", 1, EventKind.LAUNCHED, T0 - 58)
    [stored] = store.devices.record_messages([launched])
    assert (stored.event, stored.school_id, stored.starts_at) == (launched.event, "s1", T0)
    assert store.devices.record_messages([launched]) == [], "a replay is not stored again"
    [(_, results)] = store.lessons.lessons_to_settle(a.ends_at + 1)
    assert results == [PanelResult("p1", T0 - 58, None)]
