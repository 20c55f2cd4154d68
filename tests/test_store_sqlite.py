"""The SQLite store: migrations, the status rule at a given time, batches, paging."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.errors import StoreError
from controller.fleet.store import DeviceQuery
from controller.store import sqlite_path
from controller.store.migrations import LATEST
from controller.store.rows import AgentRow, CommandResultRow, HeartbeatRow
from controller.stores import Stores, open_stores, sqlite_stores
from inventory.model import (
    Condition,
    DeviceIdentity,
    DeviceKind,
    DeviceReport,
    DeviceStatus,
    Health,
)

T0 = 1_800_000_000.0


def ident(
    device_id: str, school: str = "s1", kind: DeviceKind = DeviceKind.PANEL
) -> DeviceIdentity:
    return DeviceIdentity(device_id, kind, school, "r1", "host", "0.1")


def beat(device_id: str, seq: int, at: float, cpu: float = 5.0) -> HeartbeatRow:
    return HeartbeatRow(device_id, seq, at, Health(at, cpu, 10, 20, 100, 0.1, 0.2, 0.3))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Stores]:
    s = sqlite_stores(tmp_path / "c.db")
    yield s
    s.close()


def test_migrates_from_empty_and_reopens(tmp_path: Path) -> None:
    s = sqlite_stores(tmp_path / "c.db")
    assert s.database.schema_version() == LATEST
    s.close()
    again = sqlite_stores(tmp_path / "c.db")
    assert again.database.schema_version() == LATEST
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute(f"PRAGMA user_version={LATEST + 1}")
    with pytest.raises(StoreError, match="newer than this controller knows"):
        sqlite_stores(tmp_path / "c.db")


def test_urls() -> None:
    assert sqlite_path("sqlite:///var/lib/x.db") == Path("/var/lib/x.db")
    assert sqlite_path("sqlite:data/x.db") == Path("data/x.db")
    with pytest.raises(StoreError, match="unsupported URL"):
        open_stores("mysql://x")


def test_online_while_stream_up_and_heartbeat_in_deadline(store: Stores) -> None:
    assert store.devices.device_connected(ident("p1"), 1, 90, T0) == 0
    # Connected but no heartbeat yet: not online.
    assert store.devices.get_device("p1", T0).status is DeviceStatus.OFFLINE  # type: ignore[union-attr]
    store.devices.record_messages([beat("p1", 1, T0)])
    assert store.devices.get_device("p1", T0 + 90).status is DeviceStatus.ONLINE  # type: ignore[union-attr]
    assert store.devices.get_device("p1", T0 + 91).status is DeviceStatus.OFFLINE  # type: ignore[union-attr]
    store.devices.device_disconnected("p1", 1)
    assert store.devices.get_device("p1", T0 + 1).status is DeviceStatus.OFFLINE  # type: ignore[union-attr]


def test_a_replaced_stream_ending_late_does_not_mark_the_device_down(store: Stores) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    store.devices.device_connected(ident("p1"), 2, 90, T0 + 1)
    store.devices.record_messages([beat("p1", 1, T0 + 1)])
    store.devices.device_disconnected("p1", 1)
    device = store.devices.get_device("p1", T0 + 2)
    assert device is not None and device.stream_up and device.status is DeviceStatus.ONLINE


def test_heartbeats_in_order_and_duplicates_change_nothing(store: Stores) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    store.devices.record_messages([beat("p1", 1, T0, cpu=1), beat("p1", 2, T0 + 1, cpu=2)])
    store.devices.record_messages([beat("p1", 2, T0 + 5, cpu=99), beat("p1", 1, T0 + 5, cpu=98)])
    device = store.devices.get_device("p1", T0 + 5)
    assert device is not None and device.health is not None
    assert device.last_seq == 2
    assert device.health.cpu_percent == 2
    assert device.last_heartbeat == T0 + 1
    # Reconnecting tells the device where to go on from.
    assert store.devices.device_connected(ident("p1"), 2, 90, T0 + 6) == 2


def test_reset_streams_after_restart(store: Stores) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, T0)
    store.devices.device_connected(ident("p2"), 2, 90, T0)
    assert store.devices.reset_streams() == 2
    assert not any(d.stream_up for d in store.devices.list_devices(DeviceQuery(), T0))


def test_filters_paging_and_counts(store: Stores) -> None:
    for i in range(7):
        kind = DeviceKind.PANEL if i % 2 else DeviceKind.LAPTOP
        store.devices.device_connected(ident(f"d{i}", "s1" if i < 5 else "s2", kind), i + 1, 90, T0)
    store.devices.record_messages([beat(f"d{i}", 1, T0) for i in range(0, 7, 3)])  # d0 d3 d6 online
    online = store.devices.list_devices(DeviceQuery(status=DeviceStatus.ONLINE), T0)
    assert [d.identity.device_id for d in online] == ["d0", "d3", "d6"]
    panels = store.devices.list_devices(DeviceQuery(school_id="s1", kind=DeviceKind.PANEL), T0)
    assert [d.identity.device_id for d in panels] == ["d1", "d3"]
    pages, after = [], ""
    while page := store.devices.list_devices(DeviceQuery(after_id=after, limit=3), T0):
        pages.append([d.identity.device_id for d in page])
        after = page[-1].identity.device_id
    assert pages == [["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6"]]
    counts = {(c.school_id, c.kind): (c.online, c.offline) for c in store.devices.fleet_counts(T0)}
    assert counts == {
        ("s1", DeviceKind.LAPTOP): (1, 2),
        ("s1", DeviceKind.PANEL): (1, 1),
        ("s2", DeviceKind.LAPTOP): (1, 0),
        ("s2", DeviceKind.PANEL): (0, 1),
    }
    assert {c.school_id for c in store.devices.fleet_counts(T0, "s2")} == {"s2"}


def result(device_id: str, seq: int, at: float, command_id: str) -> CommandResultRow:
    return CommandResultRow(device_id, seq, at, command_id, "ok", "pong", at)


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
    d = store.devices.get_device("p1", T0 + 2)
    assert d is not None
    assert (d.last_seq, d.heartbeats_stored, d.seq_gaps) == (3, 2, 0)
    assert d.report == report
    assert [r.command_id for r in store.devices.command_results("p1", 10)] == ["c-1"]
    assert [(c.command_id, c.status, c.seq) for c in d.recent_commands] == [("c-1", "ok", 2)]
    # Seqs 4 and 5 never came (a full spool dropped them): two gaps, counted once.
    store.devices.record_messages([beat("p1", 6, T0 + 3), beat("p1", 6, T0 + 3)])
    d = store.devices.get_device("p1", T0 + 4)
    assert d is not None
    assert (d.last_seq, d.heartbeats_stored, d.seq_gaps) == (6, 3, 2)
    # A heartbeat without a report keeps the last verdict.
    assert d.report == report
    listed = store.devices.list_devices(DeviceQuery(condition=Condition.DEGRADED), T0 + 4)
    assert [x.identity.device_id for x in listed] == ["p1"]
    assert store.devices.list_devices(DeviceQuery(condition=Condition.OK), T0 + 4) == []


def test_a_device_new_to_this_controller_starts_without_gaps(store: Stores) -> None:
    store.devices.device_connected(ident("p2"), 1, 90, T0)
    store.devices.record_messages([beat("p2", 500, T0)])
    d = store.devices.get_device("p2", T0)
    assert d is not None and (d.last_seq, d.seq_gaps) == (500, 0)


def test_a_heartbeat_without_full_reports_keeps_the_stored_ones(store: Stores) -> None:
    store.devices.device_connected(ident("p3"), 1, 90, T0)
    full = DeviceReport(Condition.OK, (), b"sys", b"net", 0, 0)
    health = beat("p3", 1, T0).health
    store.devices.record_messages([HeartbeatRow("p3", 1, T0, health, full)])
    verdict = DeviceReport(Condition.DEGRADED, ("kiosk program not running",), b"", b"", 1, 0)
    store.devices.record_messages([HeartbeatRow("p3", 2, T0 + 30, health, verdict)])
    d = store.devices.get_device("p3", T0 + 31)
    assert d is not None and d.report is not None
    assert (d.report.system, d.report.network, d.report.report_at) == (b"sys", b"net", T0)
    assert d.report.condition is Condition.DEGRADED
    assert d.report.reasons == ("kiosk program not running",)
    assert d.report.spool_pending == 1


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
    d = store.devices.get_device("p4", T0 + 31)
    assert d is not None and d.report is not None
    assert (d.report.system, d.report.report_at, d.heartbeats_stored) == (b"new", T0 + 30, 2)


def test_a_number_sqlite_cannot_hold_refuses_the_batch_and_nothing_else(
    store: Stores,
) -> None:
    store.devices.device_connected(ident("p1"), 1, 90, 1.0)
    with pytest.raises(StoreError, match=r"too large|overflow"):
        store.devices.record_messages([beat("p1", 2**63, 2.0)])
    store.devices.record_messages([beat("p1", 1, 3.0)])
    device = store.devices.get_device("p1", 3.0)
    assert device is not None and device.last_seq == 1 and device.heartbeats_stored == 1
