"""The lessons' store, one contract on both databases: rooms by school and room
together, an import's exact counts, dispatch once per lesson in the order asked, the
panels' answers, the day's counts, hostile values kept as data (or refused alike), and
two controllers on one PostgreSQL database dispatching, ending and importing at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial

import psycopg
import pytest

from controller.errors import StoreError
from controller.lessons.store import ImportCounts, LessonQuery, OutboxCommand, PanelResult
from controller.lessons.stored_values import EVENT_LESSON_CHARS, ID_CHARS
from controller.store.rows import LessonEventRow
from controller.stores import Stores, open_stores
from inventory.lessons import EventKind, FailReason, Lesson, LessonEvent, LessonRecord, LessonState
from inventory.model import DeviceKind
from tests.store_fixtures import at_once
from tests.test_lessons_store import add_device, lesson, record_events

T0 = 1_800_000_000.0
DAY = LessonQuery(T0 - 86_400, T0 + 86_400)


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    for device_id, kind, school, room in (
        ("p1", DeviceKind.PANEL, "s1", "r1"),
        ("P0", DeviceKind.PANEL, "s1", "r1"),
        ("l1", DeviceKind.LAPTOP, "s1", "r1"),
        ("gone", DeviceKind.PANEL, "s1", "r1"),
        ("p3", DeviceKind.PANEL, "s1", "r2"),
        ("p9", DeviceKind.PANEL, "s2", "r1"),
    ):
        add_device(both_stores, device_id, kind, school, room)
    both_stores.sql.write(
        "INSERT INTO enrollments (device_id, school_id, serial, not_after, enrolled_at, "
        "token_id, revoked_at) VALUES ('gone', 's1', 'c1', ?, ?, 't', ?)",
        (T0 + 86_400, T0 - 1000, T0 - 500),
    )
    return both_stores


def _commands(x: Lesson, *devices: str) -> list[OutboxCommand]:
    return [
        OutboxCommand(
            f"launch:{x.lesson_id}:{d}", d, x.lesson_id, f"{x.room_id}:{d}".encode(), x.ends_at
        )
        for d in devices
    ]


def _row(
    device: str, seq: int, x: Lesson, kind: EventKind, at: float, **kw: object
) -> LessonEventRow:
    event = LessonEvent(x.lesson_id, device, f"launch:{x.lesson_id}:{device}", kind, None, "", at)
    return LessonEventRow(device, seq, at + 1, replace(event, **kw))  # type: ignore[arg-type]


def _records(
    store: Stores, query: LessonQuery = DAY
) -> list[tuple[str, LessonState, int, int, int]]:
    return [
        (r.lesson.lesson_id, r.state, r.panels, r.launched, r.failed)
        for r in store.lessons.list_lessons(query)
    ]


# --- rooms and the schedule ---------------------------------------------------------------


def test_rooms_are_matched_by_school_and_room_together(store: Stores) -> None:
    lessons = store.lessons
    assert lessons.known_rooms([("s2", "r2"), ("s1", "r3")]) == set(), "s2 and r2 apart"
    assert lessons.known_rooms([("s1", "r1"), ("s2", "r1"), ("s2", "r2")]) == {
        ("s1", "r1"),
        ("s2", "r1"),
    }
    lessons.add_room("s2", "r2")
    lessons.add_room("s2", "r2")
    assert lessons.known_rooms([("s2", "r2")]) == {("s2", "r2")}
    assert lessons.known_rooms([]) == set()
    rooms = [("s1", "r1"), ("s2", "r1"), ("s1", "r2"), ("s2", "r2")]
    assert lessons.panels_in_rooms(rooms) == {
        ("s1", "r1"): ["P0", "p1"],
        ("s1", "r2"): ["p3"],
        ("s2", "r1"): ["p9"],
    }, "panels by code point, no laptop, no decommissioned panel, no room without one"
    assert lessons.panels_in_rooms([("s2", "r2")]) == {}


def test_an_import_applies_its_lessons_in_order_and_counts_each(store: Stores) -> None:
    a, b = lesson(), lesson("r2")
    a2 = replace(a, teacher="U")
    assert store.lessons.save_lessons([], T0) == ImportCounts(0, 0, 0, 0)
    assert store.lessons.save_lessons([a, a2, a], T0 - 1000) == ImportCounts(1, 2, 0, 0)
    assert store.lessons.save_lessons([a, b, a], T0 - 900) == ImportCounts(1, 0, 2, 0)
    store.lessons.dispatch([(a.lesson_id, _commands(a, "p1"))], T0 - 60)
    b_art = replace(b, subject="art", starts_at=T0 + 30)
    assert store.lessons.save_lessons([a2, b, b_art], T0) == ImportCounts(0, 1, 1, 1)
    assert store.lessons.lessons_in_rooms([("s1", "r1"), ("s1", "r2")], T0, T0 + 31) == {
        ("s1", "r1"): [a],
        ("s1", "r2"): [b_art],
    }


def test_lessons_in_rooms_overlap_a_half_open_window(store: Stores) -> None:
    first, second = lesson(), lesson(start=T0 + 2700)
    other_room, other_school = lesson("r2"), lesson(school_id="s2")
    store.lessons.save_lessons([second, other_school, first, other_room], T0 - 1000)
    rooms = [("s1", "r1"), ("s2", "r2")]
    assert store.lessons.lessons_in_rooms(rooms, T0 + 2700, T0 + 2701) == {("s1", "r1"): [second]}
    assert store.lessons.lessons_in_rooms(rooms, T0, T0 + 2701) == {("s1", "r1"): [first, second]}
    assert store.lessons.lessons_in_rooms(rooms, T0 - 60, T0) == {}
    assert store.lessons.lessons_in_rooms([], T0, T0 + 1) == {}


def test_due_and_missed_lessons_by_start_then_id(store: Stores) -> None:
    r2, r1, later = lesson("r2"), lesson("r1"), lesson("r1", start=T0 + 2700)
    store.lessons.save_lessons([later, r2, r1], T0 - 1000)
    assert store.lessons.due_lessons(T0 + 2700, T0) == [r1, r2, later]
    assert store.lessons.due_lessons(T0 + 2699, T0 + 2700) == [], "ended ones are not due"
    assert store.lessons.missed_lessons(T0 + 2699) == []
    assert store.lessons.missed_lessons(T0 + 2700) == [r1, r2]


# --- dispatch, answers, end and outcome ---------------------------------------------------


def test_dispatch_claims_each_scheduled_lesson_once_in_the_order_asked(store: Stores) -> None:
    a, b, empty = lesson(), lesson("r2"), lesson("r9")
    store.lessons.save_lessons([a, b, empty], T0 - 1000)
    plan = [
        (b.lesson_id, _commands(b, "p3")),
        (a.lesson_id, _commands(a, "p1", "P0")),
        (empty.lesson_id, []),
        (a.lesson_id, _commands(a, "l1")),
        ("s1/r1/nothing", _commands(a, "p9")),
    ]
    assert store.lessons.dispatch(plan, T0 - 60) == [b.lesson_id, a.lesson_id, empty.lesson_id]
    assert store.lessons.dispatch(plan, T0 - 30) == []
    assert store.lessons.dispatch([], T0) == []
    assert _records(store) == [
        (a.lesson_id, LessonState.DISPATCHED, 2, 0, 0),
        (b.lesson_id, LessonState.DISPATCHED, 1, 0, 0),
        (empty.lesson_id, LessonState.NO_DEVICE, 0, 0, 0),
    ]
    [ra, _, re] = store.lessons.list_lessons(DAY)
    assert (ra.dispatched_at, ra.reason) == (T0 - 60, "")
    assert (re.dispatched_at, re.reason) == (T0 - 60, "no panel in the room")
    assert store.lessons.pending_commands("p1", T0) == [b"r1:p1"]
    assert store.lessons.pending_commands("l1", T0) == [], "the second plan of a is not used"
    assert store.lessons.pending_commands("p9", T0) == [], "nor one for no stored lesson"
    assert store.lessons.pending_commands("p1", a.ends_at) == [], "expired with the lesson"


def test_a_devices_commands_come_oldest_first_then_by_id(store: Stores) -> None:
    x, y, z = lesson(), lesson(start=T0 + 2700), lesson(start=T0 + 5400)
    store.lessons.save_lessons([x, y, z], T0 - 1000)
    newer = OutboxCommand("a-newer", "p1", x.lesson_id, b"\x00newer", z.ends_at)
    store.lessons.dispatch([(x.lesson_id, [newer])], T0 - 50)
    upper = OutboxCommand("B-upper", "p1", y.lesson_id, b"upper\x00", z.ends_at)
    lower = OutboxCommand("a-lower", "p1", z.lesson_id, b"lower", z.ends_at)
    store.lessons.dispatch([(z.lesson_id, [lower]), (y.lesson_id, [upper])], T0 - 60)
    assert store.lessons.pending_commands("p1", T0) == [b"upper\x00", b"lower", b"\x00newer"]
    w = lesson(start=T0 + 8100)
    store.lessons.save_lessons([w], T0 - 1000)
    other = OutboxCommand("c-other", "p2", w.lesson_id, b"other", z.ends_at)
    assert store.lessons.dispatch([(w.lesson_id, [other])], T0 - 40) == [w.lesson_id]
    # Every held device's in one read, each in its own order; none for the others.
    assert store.lessons.pending_commands_of(["p1", "p2", "p9", "p\x00"], T0) == {
        "p1": [b"upper\x00", b"lower", b"\x00newer"],
        "p2": [b"other"],
    }
    assert store.lessons.pending_commands_of(["p2"], z.ends_at) == {}, "expired"
    assert store.lessons.pending_commands_of([], T0) == {}


def test_panel_events_keep_the_sequence_and_the_first_launch(store: Stores) -> None:
    a = lesson()
    store.lessons.save_lessons([a], T0 - 1000)
    store.lessons.dispatch([(a.lesson_id, _commands(a, "p1", "P0"))], T0 - 60)
    unknown = replace(a, room_id="r7")
    stored = record_events(
        store,
        [
            _row("p1", 1, a, EventKind.LAUNCHED, T0 - 58),
            _row("P0", 3, a, EventKind.FAILED, T0 - 57, reason=FailReason.CRASHED, message="x"),
            _row("P0", 5, a, EventKind.ENDED, T0 - 50),
            _row("p1", 1, a, EventKind.LAUNCHED, T0 - 40),
            _row("p1", 2, unknown, EventKind.LAUNCHED, T0 - 30),
            _row("p1", 4, a, EventKind.RELAUNCHED, T0 - 20),
            _row("p1", 6, a, EventKind.LAUNCHED, T0 - 10),
        ],
    )
    assert [(s.event.device_id, s.event.kind, s.event.at) for s in stored] == [
        ("p1", EventKind.LAUNCHED, T0 - 58),
        ("P0", EventKind.FAILED, T0 - 57),
        ("P0", EventKind.ENDED, T0 - 50),
        ("p1", EventKind.RELAUNCHED, T0 - 20),
        ("p1", EventKind.LAUNCHED, T0 - 10),
    ], "the replay of seq 1 is dropped; the unknown lesson's event is kept, not returned"
    assert {(s.school_id, s.starts_at) for s in stored} == {("s1", T0)}
    devices = store.sql.read(
        "SELECT device_id, last_seq, seq_gaps FROM devices WHERE device_id IN ('p1', 'P0') "
        "ORDER BY last_seq"
    )
    assert [(r["device_id"], r["last_seq"], r["seq_gaps"]) for r in devices] == [
        ("P0", 5, 1),
        ("p1", 6, 2),
    ]
    kept = store.sql.read("SELECT count(*) AS n FROM lesson_events")
    assert kept[0]["n"] == 6
    [(_, results)] = store.lessons.lessons_to_settle(a.ends_at)
    assert results == [PanelResult("P0", None, "crashed"), PanelResult("p1", T0 - 58, None)]
    assert store.lessons.lessons_to_settle(a.ends_at - 1) == []


def test_lessons_end_once_in_order_of_their_end(store: Stores) -> None:
    short, long, empty = lesson(minutes=30), lesson("r2", minutes=20), lesson("r9", minutes=10)
    store.lessons.save_lessons([short, long, empty], T0 - 1000)
    store.lessons.dispatch(
        [
            (short.lesson_id, _commands(short, "p1", "P0")),
            (long.lesson_id, _commands(long, "p3")),
            (empty.lesson_id, []),
        ],
        T0 - 60,
    )
    assert store.lessons.lessons_ending(T0 + 1199) == []
    assert store.lessons.lessons_ending(T0 + 1800) == [(long, ["p3"]), (short, ["P0", "p1"])]
    assert store.lessons.lessons_ending(T0 + 1800) == [], "ended once"
    assert store.lessons.next_wake(60, 120) == T0 + 1320


def test_an_outcome_is_fixed_once_recorded(store: Stores) -> None:
    a, missed = lesson(), lesson("r2")
    store.lessons.save_lessons([a, missed], T0 - 1000)
    store.lessons.dispatch([(a.lesson_id, _commands(a, "p1"))], T0 - 60)
    store.lessons.settle(a.lesson_id, LessonState.HELD, "", a.ends_at + 1)
    store.lessons.settle(a.lesson_id, LessonState.FAILED, "late reader", a.ends_at + 2)
    store.lessons.settle(missed.lesson_id, LessonState.FAILED, "not dispatched", T0 + 2700)
    assert [(r.state, r.reason) for r in store.lessons.list_lessons(DAY)] == [
        (LessonState.HELD, ""),
        (LessonState.FAILED, "not dispatched"),
    ]
    assert store.lessons.lessons_to_settle(T0 + 86_400) == []


def test_next_wake_is_the_earliest_due_thing(store: Stores) -> None:
    a, b = lesson(), lesson("r2", start=T0 + 600)
    assert store.lessons.next_wake(60, 120) is None
    store.lessons.save_lessons([a, b], T0 - 1000)
    assert store.lessons.next_wake(60.5, 120) == T0 - 60.5
    store.lessons.dispatch([(a.lesson_id, _commands(a, "p1"))], T0 - 60)
    assert store.lessons.next_wake(60, 120) == T0 + 540, "b's dispatch"
    store.lessons.dispatch([(b.lesson_id, [])], T0 + 540)
    assert store.lessons.next_wake(60, 120) == a.ends_at, "a's end"
    store.lessons.lessons_ending(a.ends_at)
    assert store.lessons.next_wake(60, 120.25) == a.ends_at + 120.25, "a's outcome"


def test_lessons_are_listed_by_start_school_room_within_the_query(store: Stores) -> None:
    xs = [
        lesson("r2"),
        lesson("r1", school_id="s2"),
        lesson("R3"),
        lesson("r1"),
        lesson("r1", start=T0 - 3600),
        lesson("r1", start=T0 + 86_400),
    ]
    store.lessons.save_lessons(xs, T0 - 10_000)
    ids = [x.lesson_id for x in xs]

    def listed(**kw: object) -> list[int]:
        query = replace(DAY, **kw)  # type: ignore[arg-type]
        return [ids.index(r.lesson.lesson_id) for r in store.lessons.list_lessons(query)]

    assert listed() == [4, 2, 3, 0, 1]
    assert listed(school_id="s1") == [4, 2, 3, 0]
    assert listed(school_id="s1", room_id="r1") == [4, 3]
    assert listed(room_id="r1") == [4, 3, 1]
    assert listed(schools=frozenset({"s2"})) == [1]
    assert listed(schools=frozenset()) == []
    assert listed(since=T0, until=T0 + 86_401) == [2, 3, 0, 1, 5]
    assert listed(since=T0, until=T0 + 86_400) == [2, 3, 0, 1], "until is not included"
    assert listed(limit=2) == [4, 2]
    assert listed(limit=0) == []
    assert listed(limit=-1) == [], "no limit is no rows on both"


def test_the_days_counts_are_exact(store: Stores) -> None:
    a, b, c = lesson(), lesson("r2"), lesson(start=T0 + 3600)
    other = lesson("r1", school_id="s2", start=T0 + 600)
    edge_in, edge_out = lesson("r5", start=T0 - 3600), lesson("r5", start=T0 + 7200)
    store.lessons.save_lessons([a, b, c, other, edge_in, edge_out], T0 - 10_000)
    store.lessons.dispatch(
        [
            (a.lesson_id, _commands(a, "p1", "P0")),
            (b.lesson_id, _commands(b, "p3")),
            (other.lesson_id, _commands(other, "p9")),
        ],
        T0 - 60,
    )
    record_events(
        store,
        [
            _row("p1", 1, a, EventKind.LAUNCHED, T0 - 30),
            _row("p3", 1, b, EventKind.FAILED, T0 - 20, reason=FailReason.NO_NETWORK),
            _row("p9", 1, other, EventKind.FAILED, T0 - 10, reason=FailReason.URL_REFUSED),
            _row("p9", 2, other, EventKind.LAUNCHED, T0 - 5),
        ],
    )
    store.lessons.settle(b.lesson_id, LessonState.FAILED, "no-network on 1 of 1", T0 + 2800)
    day = (T0 - 3600, T0 + 7200)
    counts = store.lesson_counts
    assert counts.lesson_counts(*day) == [
        ("s1", LessonState.DISPATCHED, 1),
        ("s1", LessonState.FAILED, 1),
        ("s1", LessonState.SCHEDULED, 2),
        ("s2", LessonState.DISPATCHED, 1),
    ]
    assert counts.lessons_under_way(*day, due_before=T0 + 300) == [
        ("s1", "showing", 1),
        ("s2", "showing", 1),
    ]
    assert counts.lesson_panel_counts(*day, due_before=T0 + 300) == [
        ("s1", "launched", 1),
        ("s1", "no-network", 1),
        ("s1", "not-reached", 1),
        ("s2", "url-refused", 1),
    ], "a failure wins over a later launch"
    assert counts.lesson_panel_counts(*day, due_before=T0 - 1) == [
        ("s1", "launched", 1),
        ("s1", "no-network", 1),
        ("s1", "pending", 1),
        ("s2", "url-refused", 1),
    ]
    assert counts.lesson_day_spans(*day) == [
        ("s1", T0 - 3600, c.ends_at),
        ("s2", other.starts_at, other.ends_at),
    ]
    assert counts.lesson_counts(T0 + 7200, T0 + 7201) == [("s1", LessonState.SCHEDULED, 1)]


# --- hostile values -----------------------------------------------------------------------

HOSTILE = [
    "o'brien",
    'say "hi"',
    "'); DROP TABLE lessons; --",
    "x' OR '1'='1",
    "%s %(name)s ? ?1 :name $1 {}",
    "back\\slash \\x00",
    "ünïcödé ✓ 𝄞 \u202e",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_data(store: Stores, value: str) -> None:
    x = Lesson(f"s{value}", f"r{value}", T0, T0 + 60, value, value, value, value, True, True)
    assert store.lessons.save_lessons([x], T0 - 1000) == ImportCounts(1, 0, 0, 0)
    assert store.lessons.save_lessons([x], T0 - 900) == ImportCounts(0, 0, 1, 0)
    room = (x.school_id, x.room_id)
    assert store.lessons.lessons_in_rooms([room], T0, T0 + 1) == {room: [x]}
    store.lessons.add_room(*room)
    assert store.lessons.known_rooms([room, ("s1", value)]) == {room}
    [record] = store.lessons.list_lessons(replace(DAY, school_id=x.school_id, room_id=x.room_id))
    assert record == LessonRecord(x, LessonState.SCHEDULED, "", None, 0, 0, 0)
    command = OutboxCommand(value, "p1", x.lesson_id, value.encode() + b"\x00", x.ends_at)
    assert store.lessons.dispatch([(x.lesson_id, [command])], T0 - 60) == [x.lesson_id]
    assert store.lessons.pending_commands("p1", T0) == [value.encode() + b"\x00"]
    [stored] = record_events(store, [_row("p1", 1, x, EventKind.LAUNCHED, T0, message=value)])
    assert stored.event.message == value
    assert store.lessons.lessons_ending(x.ends_at) == [(x, ["p1"])]


def _cjk(n: int) -> str:
    # Random-looking, so that PostgreSQL cannot compress it into an index row.
    return "".join(chr(0x4E00 + (i * 7919) % 20_000) for i in range(n))


def test_long_text_is_kept_whole_and_ids_up_to_their_limit(store: Stores) -> None:
    long = _cjk(100_000)
    x = Lesson(_cjk(ID_CHARS), _cjk(ID_CHARS)[::-1], T0, T0 + 60, long, long, long, long, False)
    assert store.lessons.save_lessons([x], T0 - 1000) == ImportCounts(1, 0, 0, 0)
    room = (x.school_id, x.room_id)
    assert store.lessons.lessons_in_rooms([room], T0, T0 + 1) == {room: [x]}
    store.lessons.add_room(*room)
    assert store.lessons.known_rooms([room]) == {room}
    too_long = replace(x, room_id="r" * (ID_CHARS + 1))
    with pytest.raises(StoreError, match=f"an id over {ID_CHARS} characters"):
        store.lessons.save_lessons([lesson(), too_long], T0)
    with pytest.raises(StoreError, match=f"an id over {ID_CHARS} characters"):
        store.lessons.add_room("s1", long)
    assert store.lessons.known_rooms([("s1", long)]) == set()
    assert store.lessons.lessons_in_rooms([("s1", long)], 0, T0 * 2) == {}
    assert store.lessons.panels_in_rooms([(long, "r1")]) == {}
    assert store.lessons.list_lessons(replace(DAY, school_id=long)) == []
    assert store.lessons.pending_commands(long, T0) == []
    assert [r.lesson for r in store.lessons.list_lessons(DAY)] == [x], (
        "the refused import left nothing"
    )


def test_a_nul_is_refused_in_the_schedule_and_matches_nothing(store: Stores) -> None:
    good = lesson()
    for bad in (
        replace(lesson("r2"), teacher="a\x00b"),
        replace(lesson("r2"), content_url="https://x/\x00"),
        replace(lesson("r2"), room_id="r\x00"),
    ):
        with pytest.raises(StoreError, match="a NUL character cannot be stored") as caught:
            store.lessons.save_lessons([good, bad], T0 - 1000)
        assert "\n" not in str(caught.value) and "\x00" not in str(caught.value)
    with pytest.raises(StoreError, match="a NUL character cannot be stored"):
        store.lessons.add_room("s\x00", "r1")
    assert store.lessons.list_lessons(DAY) == [], "nothing of a refused import is kept"
    assert store.lessons.known_rooms([("s1\x00", "r1"), ("s1", "r1")]) == {("s1", "r1")}
    assert store.lessons.lessons_in_rooms([("s1", "r\x00")], 0, T0 * 2) == {}
    assert store.lessons.panels_in_rooms([("s1", "r1\x00")]) == {}
    assert store.lessons.list_lessons(replace(DAY, room_id="r\x00")) == []
    assert store.lessons.list_lessons(replace(DAY, schools=frozenset({"s\x00"}))) == []
    assert store.lessons.pending_commands("p1\x00", T0) == []


def test_a_panels_odd_event_is_kept_written_out_beside_the_others(store: Stores) -> None:
    a = lesson()
    store.lessons.save_lessons([a], T0 - 1000)
    store.lessons.dispatch([(a.lesson_id, _commands(a, "p1", "P0"))], T0 - 60)
    odd_id = "\x00" + _cjk(100_000)
    long = _cjk(100_000)
    rows = [
        _row("p1", 1, a, EventKind.FAILED, T0 - 9, reason=FailReason.CRASHED, message="a\x00b"),
        _row("p1", 2, a, EventKind.LAUNCHED, T0 - 8, lesson_id=odd_id, command_id="c\x00"),
        _row("P0", 1, a, EventKind.LAUNCHED, T0 - 7, message=long),
        _row("p\x00", 1, a, EventKind.LAUNCHED, T0 - 6),
    ]
    stored = record_events(store, rows)
    assert [s.event for s in stored] == [rows[0].event, rows[2].event]
    columns = ("device_id", "seq", "lesson_id", "command_id", "message")
    kept = store.sql.read(f"SELECT {', '.join(columns)} FROM lesson_events")
    assert sorted(tuple(r[k] for k in columns) for r in kept) == [
        ("P0", 1, a.lesson_id, f"launch:{a.lesson_id}:P0", long),
        ("p1", 1, a.lesson_id, f"launch:{a.lesson_id}:p1", "a\\x00b"),
        ("p1", 2, ("\\x00" + _cjk(100_000))[:EVENT_LESSON_CHARS], "c\\x00", ""),
    ]
    [(_, results)] = store.lessons.lessons_to_settle(a.ends_at)
    assert results == [PanelResult("P0", T0 - 7, None), PanelResult("p1", None, "crashed")]


# --- two controllers at once (PostgreSQL) -------------------------------------------------


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


def _day_of(round_: int, n: int) -> list[Lesson]:
    start = T0 + round_ * 86_400
    return [lesson(f"r{i}", start=start) for i in range(n)]


def test_two_controllers_dispatch_each_lesson_once(
    two_controllers: tuple[Stores, Stores],
) -> None:
    first, second = two_controllers
    n = 200
    for round_ in range(5):
        day = _day_of(round_, n)
        assert first.lessons.save_lessons(day, T0 - 1000) == ImportCounts(n, 0, 0, 0)
        plan = [(x.lesson_id, _commands(x, "p1", "P0")) for x in day]
        # The second is given the day backwards: the store locks in one order anyway.
        one, two = at_once(
            partial(first.lessons.dispatch, plan, T0 - 60),
            partial(second.lessons.dispatch, plan[::-1], T0 - 59),
        )
        assert isinstance(one, list) and isinstance(two, list), (one, two)
        assert not set(one) & set(two), "no lesson is dispatched by both"
        assert sorted(one + two) == sorted(x.lesson_id for x in day)
        outbox = first.sql.read("SELECT count(*) AS n FROM outbox")
        panels = first.sql.read("SELECT count(*) AS n FROM lesson_panels")
        assert (outbox[0]["n"], panels[0]["n"]) == (2 * n * (round_ + 1),) * 2
        ended = at_once(
            lambda: first.lessons.lessons_ending(T0 + 10**7),
            lambda: second.lessons.lessons_ending(T0 + 10**7),
        )
        assert all(isinstance(e, list) for e in ended), ended
        ids = [x.lesson_id for e in ended for x, _ in e]
        assert sorted(ids) == sorted(x.lesson_id for x in day), "each ended by one"


def test_two_controllers_import_the_same_new_dayat_once(
    two_controllers: tuple[Stores, Stores],
) -> None:
    first, second = two_controllers
    n = 300
    for round_ in range(5):
        day = _day_of(round_, n)
        one, two = at_once(
            partial(first.lessons.save_lessons, day, T0 - 1000),
            partial(second.lessons.save_lessons, day[::-1], T0 - 999),
        )
        assert isinstance(one, ImportCounts) and isinstance(two, ImportCounts), (one, two)
        assert one.added + two.added == n
        assert (one.added + one.unchanged, two.added + two.unchanged) == (n, n)
    assert len(first.lessons.list_lessons(LessonQuery(0, T0 * 2, limit=10**6))) == 5 * n


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


def _while_held(url: str, statement: str, call: Callable[[], object], commit: bool) -> object:
    """``call``'s outcome when another controller's transaction ran ``statement`` first
    and then commits or rolls back while ``call`` waits for it."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # the outcome under test
            outcome.append(exc)

    with psycopg.connect(url) as other:
        other.execute(statement)
        thread = threading.Thread(target=run)
        thread.start()
        _blocked_on_a_lock(url)
        if commit:
            other.commit()
        else:
            other.rollback()
    thread.join(30)
    return outcome[0]


@pytest.mark.parametrize("other_commits", [True, False])
def test_a_dispatch_waits_for_anothers_claim_and_skips_what_it_took(
    pg_url: str, other_commits: bool
) -> None:
    stores = open_stores(pg_url)
    try:
        x, y = lesson(), lesson("r2")
        stores.lessons.save_lessons([x, y], T0 - 1000)
        claim = f"UPDATE lessons SET state = 'dispatched' WHERE lesson_id = '{x.lesson_id}'"
        plan = [(x.lesson_id, _commands(x, "p1")), (y.lesson_id, _commands(y, "p3"))]
        done = _while_held(
            pg_url, claim, lambda: stores.lessons.dispatch(plan, T0 - 60), other_commits
        )
        if other_commits:
            assert done == [y.lesson_id]
            assert stores.lessons.pending_commands("p1", T0) == []
        else:
            assert done == [x.lesson_id, y.lesson_id]
            assert stores.lessons.pending_commands("p1", T0) == [b"r1:p1"]
    finally:
        stores.close()


@pytest.mark.parametrize("other_commits", [True, False])
def test_an_import_waits_for_a_dispatch_and_leaves_what_it_dispatched(
    pg_url: str, other_commits: bool
) -> None:
    stores = open_stores(pg_url)
    try:
        x, y = lesson(), lesson("r2")
        stores.lessons.save_lessons([x, y], T0 - 1000)
        claim = f"UPDATE lessons SET state = 'dispatched' WHERE lesson_id = '{x.lesson_id}'"
        moved = [replace(x, teacher="U"), replace(y, teacher="U")]
        counts = _while_held(
            pg_url, claim, lambda: stores.lessons.save_lessons(moved, T0 - 500), other_commits
        )
        if other_commits:
            assert counts == ImportCounts(0, 1, 0, 1)
            assert [r.lesson.teacher for r in stores.lessons.list_lessons(DAY)] == ["T", "U"]
        else:
            assert counts == ImportCounts(0, 2, 0, 0)
            assert [r.lesson.teacher for r in stores.lessons.list_lessons(DAY)] == ["U", "U"]
    finally:
        stores.close()


@pytest.mark.parametrize(
    ("other_commits", "teacher", "expected"),
    [
        (True, "T", ImportCounts(1, 0, 1, 0)),
        (True, "V", ImportCounts(1, 1, 0, 0)),
        (False, "V", ImportCounts(2, 0, 0, 0)),
    ],
)
def test_an_import_waits_for_anothers_new_lesson_and_counts_it_stored(
    pg_url: str, other_commits: bool, teacher: str, expected: ImportCounts
) -> None:
    stores = open_stores(pg_url)
    try:
        x, y = lesson(), lesson("r2")
        insert = (
            "INSERT INTO lessons (lesson_id, school_id, room_id, starts_at, ends_at, "
            "class_name, subject, teacher, content_url, remote, updated_at) VALUES "
            f"('{x.lesson_id}', 's1', 'r1', {x.starts_at}, {x.ends_at}, '7B', 'maths', "
            f"'{teacher}', 'https://x/l', 0, 0)"
        )
        counts = _while_held(
            pg_url, insert, lambda: stores.lessons.save_lessons([x, y], T0 - 500), other_commits
        )
        assert counts == expected
        assert [r.lesson for r in stores.lessons.list_lessons(DAY)] == [x, y]
    finally:
        stores.close()
