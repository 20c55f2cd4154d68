"""The devices' store, one contract on both databases: the status rule at a given
time, batches stored in order with replays and gaps counted exactly, reports, paging
and counts, hostile values kept as data, ids no device can have; on PostgreSQL, both
ways of storing a batch keep the same values, and two controllers storing one device's
messages at once count each of them once."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from controller.errors import StoreError
from controller.fleet.sql_batch import store_batch
from controller.fleet.sql_store import SqlDevices
from controller.fleet.store import DeviceQuery
from controller.fleet.stored_values import KEY_CHARS
from controller.store.rows import (
    AgentRow,
    CommandResultRow,
    HeartbeatRow,
    LessonEventRow,
    StoredLessonEvent,
)
from controller.store.sql import SqlDatabase, Tx
from controller.stores import Stores, open_stores
from inventory.lessons import EventKind, LessonEvent
from inventory.model import (
    CommandOutcome,
    Condition,
    DeviceIdentity,
    DeviceKind,
    DeviceRecord,
    DeviceReport,
    DeviceStatus,
    Health,
    KindCount,
    OsInfo,
    SchoolReports,
)
from inventory.rollouts import Selector, parse_selector
from tests.pg_cluster import PgServer
from tests.test_store_sqlite import T0, beat, ident


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def result(device_id: str, seq: int, at: float, command_id: str) -> CommandResultRow:
    return CommandResultRow(device_id, seq, at, command_id, "ok", "pong", at)


def full(device_id: str, seq: int, at: float, system: bytes) -> HeartbeatRow:
    """A heartbeat with a verdict and full reports (and a Wi-Fi association)."""
    wifi = (("aa:bb:cc:00:11:22", -60.0),)
    report = DeviceReport(Condition.OK, (), system, b"net-" + system, wifi=wifi)
    return HeartbeatRow(device_id, seq, at, beat(device_id, seq, at).health, report)


def device(store: Stores, device_id: str, now: float) -> DeviceRecord:
    found = store.devices.get_device(device_id, now)
    assert found is not None, device_id
    return found


def counters(store: Stores, device_id: str) -> tuple[int, int, int]:
    d = device(store, device_id, T0)
    return d.last_seq, d.heartbeats_stored, d.seq_gaps


# --- streams and the status rule ----------------------------------------------------------


def test_online_while_stream_up_and_heartbeat_in_deadline(store: Stores) -> None:
    assert store.devices.device_connected(ident("p1"), 1, 90, T0) == 0
    # Connected but no heartbeat yet: not online.
    assert device(store, "p1", T0).status is DeviceStatus.OFFLINE
    store.devices.record_messages([beat("p1", 1, T0)])
    assert device(store, "p1", T0 + 90).status is DeviceStatus.ONLINE
    assert device(store, "p1", T0 + 91).status is DeviceStatus.OFFLINE
    store.devices.device_disconnected("p1", 1)
    assert device(store, "p1", T0 + 1).status is DeviceStatus.OFFLINE


def test_a_replaced_stream_ending_late_does_not_mark_the_device_down(store: Stores) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    store.devices.device_connected(ident("p1"), 2, 90, T0 + 1)
    store.devices.record_messages([beat("p1", 1, T0 + 1)])
    store.devices.device_disconnected("p1", 1)
    d = device(store, "p1", T0 + 2)
    assert d.stream_up and d.status is DeviceStatus.ONLINE


def test_reset_streams_after_restart(store: Stores) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    store.devices.device_connected(ident("p2"), 2, 90, T0)
    assert store.devices.reset_streams() == 2
    assert store.devices.reset_streams() == 0
    assert not any(d.stream_up for d in store.devices.list_devices(DeviceQuery(), T0))


def test_a_controller_marks_down_only_its_own_streams(store: Stores) -> None:
    mine, theirs = range(2**32, 2**33), range(2**33, 2**34)
    store.devices.device_connected(ident("p1"), mine.start, 90, T0)
    store.devices.device_connected(ident("p2"), mine.stop - 1, 90, T0)
    store.devices.device_connected(ident("p3"), theirs.start, 90, T0)
    store.devices.device_connected(ident("p4"), 7, 90, T0)
    assert store.devices.reset_streams(mine) == 2
    up = {
        d.identity.device_id for d in store.devices.list_devices(DeviceQuery(), T0) if d.stream_up
    }
    assert up == {"p3", "p4"}


def test_a_device_is_read_back_as_it_was_stored(store: Stores) -> None:
    identity = DeviceIdentity(
        "p1",
        DeviceKind.PANEL,
        "s1",
        "r1",
        "panel-host",
        "0.9.1",
        OsInfo("Debian GNU/Linux", "12.5", "6.1.0-18-amd64", T0 - 3600.25),
        address="198.18.0.5",
        labels=(("grade", "5"), ("wing", "north")),
    )
    assert store.devices.device_connected(identity, 7, 90.5, T0) == 0
    health = Health(T0 + 0.000001, 12.5, 40.25, 61.0, 3600.0, 0.5, 0.25, 0.125)
    report = DeviceReport(Condition.DEGRADED, ("disk / at 93%", "kiosk down"), b"\x00sys\xff", b"n")
    store.devices.record_messages(
        [HeartbeatRow("p1", 3, T0 + 1, health, DeviceReport(Condition.OK, (), b"", b"", 4, 2))]
    )
    store.devices.record_messages(
        [
            HeartbeatRow("p1", 5, T0 + 2, health, report),
            result("p1", 6, T0 + 3, "c-1"),
            result("p1", 8, T0 + 4, "c-2"),
        ]
    )
    expected = DeviceRecord(
        identity=identity,
        status=DeviceStatus.ONLINE,
        stream_up=True,
        first_seen=T0,
        last_heartbeat=T0 + 2,
        offline_after=90.5,
        last_seq=8,
        health=health,
        report=DeviceReport(
            Condition.DEGRADED, ("disk / at 93%", "kiosk down"), b"\x00sys\xff", b"n", 0, 0, T0 + 2
        ),
        heartbeats_stored=2,
        seq_gaps=2,
        recent_commands=(
            CommandOutcome("c-2", "ok", "pong", T0 + 4, T0 + 4, 8),
            CommandOutcome("c-1", "ok", "pong", T0 + 3, T0 + 3, 6),
        ),
    )
    assert store.devices.get_device("p1", T0 + 92.5) == expected
    listed = store.devices.list_devices(DeviceQuery(), T0 + 92.6)
    assert listed == [
        DeviceRecord(
            **{
                **{f: getattr(expected, f) for f in DeviceRecord.__dataclass_fields__},
                "status": DeviceStatus.OFFLINE,
                "recent_commands": (),
            }
        )
    ]
    assert store.devices.devices_by_id(["p1"], T0 + 92.6) == listed
    assert store.devices.command_results("p1", 1) == [expected.recent_commands[0]]
    # A hello without an OS keeps none; reconnecting answers the last seq.
    assert store.devices.device_connected(ident("p1"), 8, 90, T0 + 5) == 8
    assert device(store, "p1", T0 + 5).identity == ident("p1")


# --- batches: order, replays, gaps --------------------------------------------------------


def test_heartbeats_in_order_and_duplicates_change_nothing(store: Stores) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    store.devices.record_messages([beat("p1", 1, T0, cpu=1), beat("p1", 2, T0 + 1, cpu=2)])
    store.devices.record_messages([beat("p1", 2, T0 + 5, cpu=99), beat("p1", 1, T0 + 5, cpu=98)])
    d = device(store, "p1", T0 + 5)
    assert d.health is not None
    assert (d.last_seq, d.health.cpu_percent, d.last_heartbeat) == (2, 2, T0 + 1)
    # Reconnecting tells the device where to go on from.
    assert store.devices.device_connected(ident("p1"), 2, 90, T0 + 6) == 2


def test_heartbeats_and_results_share_one_ordered_sequence(store: Stores) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    report = DeviceReport(Condition.DEGRADED, ("disk / at 93%",), b"", b"", 2, 1)
    batch: list[AgentRow] = [
        beat("p1", 1, T0),
        result("p1", 2, T0, "c-1"),
        HeartbeatRow("p1", 3, T0 + 1, beat("p1", 3, T0 + 1).health, report),
    ]
    store.devices.record_messages(batch)
    # A replay of the same batch (the acks were lost) changes nothing.
    store.devices.record_messages(batch)
    d = device(store, "p1", T0 + 2)
    assert (d.last_seq, d.heartbeats_stored, d.seq_gaps) == (3, 2, 0)
    assert d.report == report
    assert [(c.command_id, c.status, c.seq) for c in d.recent_commands] == [("c-1", "ok", 2)]
    # Seqs 4 and 5 never came (a full spool dropped them): two gaps, counted once.
    store.devices.record_messages([beat("p1", 6, T0 + 3), beat("p1", 6, T0 + 3)])
    d = device(store, "p1", T0 + 4)
    assert (d.last_seq, d.heartbeats_stored, d.seq_gaps) == (6, 3, 2)
    # A heartbeat without a report keeps the last verdict.
    assert d.report == report
    listed = store.devices.list_devices(DeviceQuery(condition=Condition.DEGRADED), T0 + 4)
    assert [x.identity.device_id for x in listed] == ["p1"]
    assert store.devices.list_devices(DeviceQuery(condition=Condition.OK), T0 + 4) == []


def test_a_device_new_to_this_controller_starts_without_gaps(store: Stores) -> None:
    store.devices.device_connected(ident("p2"), 1, 90, T0)
    store.devices.record_messages([beat("p2", 500, T0)])
    assert counters(store, "p2") == (500, 1, 0)


def _mixed_batches() -> list[list[AgentRow]]:
    """Several devices in one batch, each many times, replays inside and across
    batches, gaps, and results between heartbeats."""
    first: list[AgentRow] = [
        beat("p1", 1, T0, cpu=1),
        beat("p2", 1, T0, cpu=1),
        beat("p1", 2, T0 + 1, cpu=2),
        result("p2", 2, T0 + 1, "c-a"),
        beat("p1", 4, T0 + 2, cpu=4),  # seq 3 never came
        beat("p2", 3, T0 + 2, cpu=3),
        beat("p1", 3, T0 + 3, cpu=33),  # late: below last_seq, a replay
        full("p3", 10, T0 + 3, b"first"),  # new here: no gap
        beat("p2", 2, T0 + 3, cpu=22),  # the result's seq: a replay
        beat("p1", 5, T0 + 4, cpu=5),
        full("p3", 12, T0 + 4, b"second"),  # one gap
    ]
    second: list[AgentRow] = [
        *first[:4],  # the acks were lost: sent again
        beat("p2", 7, T0 + 5, cpu=7),  # 4, 5 and 6 never came
        result("p1", 6, T0 + 5, "c-b"),
        result("p1", 6, T0 + 5, "c-again"),  # a replay of a result
        beat("p1", 9, T0 + 6, cpu=9),  # 7 and 8 never came
        full("p3", 11, T0 + 3.5, b"late"),  # below last_seq; its older report is kept out
        beat("p4", 1, T0 + 6, cpu=1),  # p4 never connected: nothing to update
    ]
    return [first, second]


def test_a_batch_of_many_devices_counts_replays_and_gaps_exactly(store: Stores) -> None:
    for d in ("p1", "p2", "p3"):
        store.devices.device_connected(ident(d), 1, 90, T0)
    for batch in _mixed_batches():
        assert store.devices.record_messages(batch) == []
    assert counters(store, "p1") == (9, 5, 3)
    assert counters(store, "p2") == (7, 3, 3)
    assert counters(store, "p3") == (12, 2, 1)
    health = {d: device(store, d, T0).health for d in ("p1", "p2", "p3")}
    assert {d: (h.cpu_percent, h.collected_at) for d, h in health.items() if h} == {
        "p1": (9, T0 + 6),
        "p2": (7, T0 + 5),
        "p3": (5.0, T0 + 4),
    }
    assert [c.command_id for c in store.devices.command_results("p1", 10)] == ["c-b"]
    assert [c.command_id for c in store.devices.command_results("p2", 10)] == ["c-a"]
    p3 = device(store, "p3", T0)
    assert p3.report is not None
    assert (p3.report.system, p3.report.network, p3.report.report_at) == (
        b"second",
        b"net-second",
        T0 + 4,
    )
    assert store.devices.get_device("p4", T0) is None
    # Two batches again, in one: nothing changes.
    store.devices.record_messages([row for batch in _mixed_batches() for row in batch])
    assert [counters(store, d) for d in ("p1", "p2", "p3")] == [(9, 5, 3), (7, 3, 3), (12, 2, 1)]


def test_a_heartbeat_without_full_reports_keeps_the_stored_ones(store: Stores) -> None:
    store.devices.device_connected(ident("p3"), 1, 90, T0)
    fulls = DeviceReport(Condition.OK, (), b"sys", b"net", 0, 0)
    health = beat("p3", 1, T0).health
    store.devices.record_messages([HeartbeatRow("p3", 1, T0, health, fulls)])
    verdict = DeviceReport(Condition.DEGRADED, ("kiosk program not running",), b"", b"", 1, 0)
    store.devices.record_messages([HeartbeatRow("p3", 2, T0 + 30, health, verdict)])
    d = device(store, "p3", T0 + 31)
    assert d.report == DeviceReport(
        Condition.DEGRADED, ("kiosk program not running",), b"sys", b"net", 1, 0, T0
    )


def test_a_replayed_older_report_never_replaces_a_newer_one(store: Stores) -> None:
    store.devices.device_connected(ident("p4"), 1, 90, T0)
    old = HeartbeatRow(
        "p4", 1, T0, beat("p4", 1, T0).health, DeviceReport(Condition.OK, (), b"old", b"old")
    )
    new = HeartbeatRow(
        "p4",
        2,
        T0 + 30,
        beat("p4", 2, T0 + 30).health,
        DeviceReport(Condition.OK, (), b"new", b"new"),
    )
    store.devices.record_messages([old, new])
    store.devices.record_messages([old])  # its ack was lost: the device sends it again
    d = device(store, "p4", T0 + 31)
    assert d.report is not None
    assert (d.report.system, d.report.report_at, d.heartbeats_stored) == (b"new", T0 + 30, 2)


def test_a_number_the_database_cannot_hold_refuses_the_batch_and_nothing_else(
    store: Stores,
) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, 1.0)
    with pytest.raises(StoreError, match=r"too large|overflow|out of range") as caught:
        store.devices.record_messages([beat("p1", 1, 2.0), beat("p1", 2**63, 2.0)])
    assert "\n" not in str(caught.value)
    store.devices.record_messages([beat("p1", 1, 3.0)])
    d = device(store, "p1", 3.0)
    assert (d.last_seq, d.heartbeats_stored, d.last_heartbeat) == (1, 1, 3.0)


def test_an_infinite_figure_the_edge_let_through_is_kept_and_fails_no_batch(
    store: Stores,
) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    store.devices.device_connected(ident("p2"), 2, 90, T0)
    inf = float("inf")
    odd = Health(T0, 1, 1, 1, inf, inf, -inf, 0)
    store.devices.record_messages([HeartbeatRow("p1", 1, T0, odd), beat("p2", 1, T0)])
    assert device(store, "p1", T0).health == odd
    assert counters(store, "p2") == (1, 1, 0)


def test_a_lesson_event_is_stored_in_the_batch_s_own_transaction(store: Stores) -> None:
    seen: list[int] = []

    def lesson_event(tx: Tx, r: LessonEventRow) -> StoredLessonEvent | None:
        # The heartbeat before it in the batch, not yet committed, is visible here.
        row = tx.execute(
            "SELECT last_seq FROM devices WHERE device_id = ?", (r.device_id,)
        ).fetchone()
        seen.append(int(row["last_seq"]))
        if r.event.lesson_id == "boom":
            raise StoreError("the lesson's store refused it")
        return StoredLessonEvent(r.event, "s1", T0)

    devices = SqlDevices(store.sql, store.enrollments.get_enrollment, lesson_event)
    devices.device_connected(ident("p1"), 1, 90, T0)
    event = LessonEvent("l1", "p1", "cmd-1", EventKind.LAUNCHED, None, "", T0)
    stored = devices.record_messages([beat("p1", 1, T0), LessonEventRow("p1", 2, T0, event)])
    assert stored == [StoredLessonEvent(event, "s1", T0)]
    boom = LessonEvent("boom", "p1", "cmd-2", EventKind.LAUNCHED, None, "", T0)
    with pytest.raises(StoreError, match="refused it"):
        devices.record_messages([beat("p1", 3, T0 + 1), LessonEventRow("p1", 4, T0, boom)])
    assert seen == [1, 3]
    # The batch is stored whole or not at all.
    assert counters(store, "p1") == (1, 1, 0)


# --- reading: paging, order, counts -------------------------------------------------------


def test_filters_paging_and_counts(store: Stores) -> None:
    for i in range(7):
        kind = DeviceKind.PANEL if i % 2 else DeviceKind.LAPTOP
        store.devices.device_connected(ident(f"d{i}", "s1" if i < 5 else "s2", kind), i + 1, 90, T0)
    store.devices.record_messages([beat(f"d{i}", 1, T0) for i in range(0, 7, 3)])  # d0 d3 d6 online
    online = store.devices.list_devices(DeviceQuery(status=DeviceStatus.ONLINE), T0)
    assert [d.identity.device_id for d in online] == ["d0", "d3", "d6"]
    offline = store.devices.list_devices(DeviceQuery(status=DeviceStatus.OFFLINE), T0)
    assert [d.identity.device_id for d in offline] == ["d1", "d2", "d4", "d5"]
    panels = store.devices.list_devices(DeviceQuery(school_id="s1", kind=DeviceKind.PANEL), T0)
    assert [d.identity.device_id for d in panels] == ["d1", "d3"]
    scoped = store.devices.list_devices(DeviceQuery(schools=frozenset({"s2", "x"})), T0)
    assert [d.identity.device_id for d in scoped] == ["d5", "d6"]
    assert store.devices.list_devices(DeviceQuery(schools=frozenset()), T0) == []
    pages, after = [], ""
    while page := store.devices.list_devices(DeviceQuery(after_id=after, limit=3), T0):
        pages.append([d.identity.device_id for d in page])
        after = page[-1].identity.device_id
    assert pages == [["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6"]]
    assert store.devices.fleet_counts(T0) == [
        KindCount("s1", DeviceKind.LAPTOP, 1, 2),
        KindCount("s1", DeviceKind.PANEL, 1, 1),
        KindCount("s2", DeviceKind.LAPTOP, 1, 0),
        KindCount("s2", DeviceKind.PANEL, 0, 1),
    ]
    assert store.devices.fleet_counts(T0, "s2") == [
        KindCount("s2", DeviceKind.LAPTOP, 1, 0),
        KindCount("s2", DeviceKind.PANEL, 0, 1),
    ]
    assert store.devices.fleet_counts(T0, "nope") == []


def test_school_reports_sum_online_verdicts_gaps_and_drops(store: Stores) -> None:
    verdicts = [Condition.OK, Condition.OK, Condition.DEGRADED, Condition.CRITICAL, Condition.OK]
    for i, condition in enumerate(verdicts):
        store.devices.device_connected(ident(f"d{i}", "s1" if i < 4 else "s2"), i + 1, 90, T0)
        report = DeviceReport(condition, (), b"", b"", 0, 10 * i)
        health = beat("x", 1, T0).health
        store.devices.record_messages(
            [
                HeartbeatRow(f"d{i}", 5, T0, health, None),
                HeartbeatRow(f"d{i}", 7 + i, T0 + i, health, report),
            ]
        )
    store.devices.device_connected(ident("quiet", "s3"), 9, 90, T0)
    # At T0 + 92 the devices whose last heartbeat came at T0 and T0 + 1 are offline.
    assert store.devices.school_reports(T0 + 92) == [
        SchoolReports("s1", {Condition.DEGRADED: 1, Condition.CRITICAL: 1}, 1 + 2 + 3 + 4, 60),
        SchoolReports("s2", {Condition.OK: 1}, 5, 40),
        SchoolReports("s3", {}, 0, 0),
    ]


def test_ids_are_ordered_and_paged_by_code_point(store: Stores) -> None:
    ids = ["d.1", "d-1", "D1", "d_1", "d1", "d:1", "Z", "a"]
    for n, device_id in enumerate(ids):
        store.devices.device_connected(ident(device_id, f"s-{device_id}"), n + 1, 90, T0)
    ordered = sorted(ids)
    assert ordered == ["D1", "Z", "a", "d-1", "d.1", "d1", "d:1", "d_1"]
    listed = store.devices.list_devices(DeviceQuery(), T0)
    assert [d.identity.device_id for d in listed] == ordered
    pages, after = [], ""
    while page := store.devices.list_devices(DeviceQuery(after_id=after, limit=3), T0):
        pages.append([d.identity.device_id for d in page])
        after = page[-1].identity.device_id
    assert pages == [ordered[:3], ordered[3:6], ordered[6:]]
    every = parse_selector("kind=panel")
    assert [d.device_id for d in store.devices.select_devices(every, None, T0)] == ordered
    assert [d.identity.device_id for d in store.devices.devices_by_id(ids, T0)] == ordered
    counts = store.devices.fleet_counts(T0)
    assert [c.school_id for c in counts] == [f"s-{i}" for i in ordered]
    assert [r.school_id for r in store.devices.school_reports(T0)] == [f"s-{i}" for i in ordered]


# --- hostile values -----------------------------------------------------------------------

# Random-looking, so that PostgreSQL cannot compress it.
LONG = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(100_000))
HOSTILE = [
    "o'brien",
    'say "hi"',
    "'); DROP TABLE devices; --",
    "x' OR '1'='1",
    "%s %(name)s ? ?1 :name $1 {}",
    "back\\slash \\x00 \\",
    "tab\tcr\r",
    "ünïcödé ✓ 𝄞 \u202e",
    "a\x00b",
    "\x00",
    "",
    LONG,
]


def _kept(value: str) -> str:
    """What both stores keep of a device's free text: NULs written out."""
    return value.replace("\x00", "\\x00")


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:20]))
def test_hostile_text_from_a_device_is_data_and_fails_no_other_device(
    store: Stores, value: str
) -> None:
    hostile = DeviceIdentity(
        "p1",
        DeviceKind.PANEL,
        "s1",
        "r1",
        value,
        value,
        OsInfo(value, value, value or "k", T0),
        labels=(("grade", value), ("wing", "north")),
    )
    store.devices.device_connected(hostile, 1, 90, T0)
    store.devices.device_connected(ident("p2"), 2, 90, T0)
    report = DeviceReport(Condition.DEGRADED, (value, "second"), value.encode(), b"n")
    store.devices.record_messages(
        [
            beat("p2", 1, T0),
            HeartbeatRow("p1", 1, T0, beat("p1", 1, T0).health, report),
            CommandResultRow("p1", 2, T0, value, value, value, T0),
            beat("p2", 2, T0 + 1),
        ]
    )
    kept = _kept(value)
    d = device(store, "p1", T0)
    assert d.identity == DeviceIdentity(
        "p1",
        DeviceKind.PANEL,
        "s1",
        "r1",
        kept,
        kept,
        OsInfo(kept, kept, kept or "k", T0),
        labels=(("grade", kept), ("wing", "north")),
    )
    assert d.report is not None
    # Reasons are kept one a line (the edge makes a reason's line breaks spaces).
    assert d.report.reasons == tuple(f"{kept}\nsecond".splitlines())
    assert d.report.system == value.encode()
    assert d.recent_commands == (CommandOutcome(kept, kept, kept, T0, T0, 2),)
    assert counters(store, "p2") == (2, 2, 0)
    # A person's selector with the same values finds it.
    for text in (f"label.grade={value}", f"os={value}"):
        # What a selector's text can say: no separators, no spaces at the ends.
        if any(c in value for c in ",=|") or not value or value != value.strip():
            continue
        selector = parse_selector(text)
        assert [s.device_id for s in store.devices.select_devices(selector, None, T0)] == ["p1"]


def test_ids_no_device_can_have_are_refused_or_find_nothing(store: Stores) -> None:
    long_id = "d" * (KEY_CHARS + 1)
    for bad in (ident("a\x00b"), ident("p", "s\x00"), ident(long_id), ident("p", long_id)):
        with pytest.raises(StoreError, match="has a NUL or is over 200 characters") as caught:
            store.devices.device_connected(bad, 1, 90, T0)
        assert "\n" not in str(caught.value)
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    store.devices.device_connected(ident("d" * KEY_CHARS), 2, 90, T0)
    # Rows of devices that cannot exist change nothing and fail no other device's.
    batch: list[AgentRow] = [
        beat("a\x00b", 1, T0),
        beat("p1", 1, T0),
        result("a\x00b", 2, T0, "c"),
        beat(long_id, 1, T0),
        full("p1", 2, T0, b"s"),
    ]
    assert store.devices.record_messages(batch) == []
    assert counters(store, "p1") == (2, 2, 0)
    assert counters(store, "d" * KEY_CHARS) == (0, 0, 0)
    assert store.devices.get_device("a\x00b", T0) is None
    assert store.devices.get_device(long_id, T0) is None
    assert store.devices.command_results("a\x00b", 10) == []
    assert [d.identity.device_id for d in store.devices.devices_by_id(["a\x00b", "p1"], T0)] == [
        "p1"
    ]
    assert store.devices.list_devices(DeviceQuery(school_id="s1\x00"), T0) == []
    scoped = store.devices.list_devices(DeviceQuery(schools=frozenset({"s1\x00", long_id})), T0)
    assert scoped == []
    store.devices.device_disconnected("a\x00b", 1)
    assert store.devices.fleet_counts(T0, "s\x00") == []
    # A page token with a NUL continues where its text before the NUL would.
    after = store.devices.list_devices(DeviceQuery(after_id="d\x00zzz"), T0)
    assert [d.identity.device_id for d in after] == ["d" * KEY_CHARS, "p1"]
    for selector in (
        Selector(devices=frozenset({"a\x00b"})),
        Selector(schools=frozenset({"s1\x00"})),
        Selector(rooms=frozenset({long_id})),
    ):
        assert store.devices.select_devices(selector, None, T0) == []
    assert (
        store.devices.select_devices(Selector(schools=frozenset({"s1"})), frozenset({"s1\x00"}), T0)
        == []
    )


# --- PostgreSQL: the two ways of storing a batch; two controllers at once ------------------

_TABLES = {
    "devices": "device_id",
    "device_reports": "device_id",
    "device_wifi": "device_id",
    "bssid_seen": "bssid",
    "command_results": "device_id, seq",
}


def _dump(db: SqlDatabase) -> dict[str, list[dict[str, object]]]:
    return {
        table: [dict(r) for r in db.read(f"SELECT * FROM {table} ORDER BY {order}")]
        for table, order in _TABLES.items()
    }


def _store_each_way(pg_url: str, documents: bool) -> dict[str, list[dict[str, object]]]:
    stores = open_stores(pg_url)
    try:
        for d in ("p1", "p2", "p3"):
            stores.devices.device_connected(ident(d), 1, 90, T0)
        for batch in _mixed_batches():
            with stores.sql.transaction() as tx:
                store_batch(tx, batch, lambda tx, r: None, documents=documents)
        return _dump(stores.sql)
    finally:
        stores.close()


def test_postgresql_s_documents_store_what_one_row_a_statement_stores(
    pg_server: PgServer, pg_url: str
) -> None:
    other_url = pg_server.fresh_database()
    try:
        by_rows = _store_each_way(other_url, documents=False)
        by_documents = _store_each_way(pg_url, documents=True)
    finally:
        pg_server.drop(other_url)
    assert by_documents == by_rows
    assert [(r["device_id"], r["heartbeats_stored"]) for r in by_rows["devices"]] == [
        ("p1", 5),
        ("p2", 3),
        ("p3", 2),
    ]
    assert by_rows["bssid_seen"] == [{"bssid": "aa:bb:cc:00:11:22", "seen_at": T0 + 4}]


def _race(urls: list[str], work: Callable[[Stores], None]) -> None:
    stores = [open_stores(url) for url in urls]
    start = threading.Barrier(len(stores))
    failures: list[BaseException] = []

    def run(s: Stores) -> None:
        try:
            start.wait()
            work(s)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for s in stores:
            s.close()
    assert failures == []


def test_two_controllers_storing_the_same_messages_at_once_count_each_once(pg_url: str) -> None:
    setup = open_stores(pg_url)
    setup.devices.device_connected(ident("p1"), 1, 90, T0)
    # Both controllers get every message of the device (one it moved to replays what
    # the other never acked), in batches of 20 as the writer makes them: seqs 1-600 but
    # those divisible by 7, every tenth a command result. Each batch's transaction waits
    # for the other's on the device's row, then finds its messages stored or not: a
    # store that read last_seq and then wrote would count many twice.
    seqs = [s for s in range(1, 601) if s % 7]
    rows: list[AgentRow] = [
        result("p1", s, T0 + s, f"c-{s}") if s % 10 == 0 else beat("p1", s, T0 + s, cpu=s % 100)
        for s in seqs
    ]
    batches = [rows[i : i + 20] for i in range(0, len(rows), 20)]

    def store_all(stores: Stores) -> None:
        for batch in batches:
            stores.devices.record_messages(batch)

    _race([pg_url, pg_url], store_all)
    results = [s for s in seqs if s % 10 == 0]
    assert counters(setup, "p1") == (600, len(seqs) - len(results), 600 // 7)
    stored = setup.devices.command_results("p1", 1000)
    assert [c.seq for c in stored] == sorted(results, reverse=True)
    health = device(setup, "p1", T0).health
    assert health is not None and (health.cpu_percent, health.collected_at) == (99, T0 + 599)
    setup.close()
