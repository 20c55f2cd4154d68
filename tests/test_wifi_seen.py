"""What devices see of the Wi-Fi, from their full network reports to the store."""

from __future__ import annotations

import pytest

from controller.api.convert import report_from_pb
from controller.store.rows import HeartbeatRow
from controller.stores import Stores
from inventory.model import Condition, DeviceReport, Health
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from tests.test_store_sqlite import ident


@pytest.fixture
def store(both_stores: Stores) -> Stores:
    return both_stores


def _beat(
    device_id: str, seq: int, at: float, network: bytes, wifi: tuple[tuple[str, float | None], ...]
) -> HeartbeatRow:
    report = DeviceReport(Condition.OK, (), network=network, wifi=wifi)
    return HeartbeatRow(device_id, seq, at, Health(at, 1, 1, 1, 1, 0, 0, 0), report)


def _rows(store: Stores, sql: str) -> list[tuple[object, ...]]:
    # keys(): an sqlite3.Row iterates over its values, PostgreSQL's dict row its keys.
    return [tuple(r[k] for k in r.keys()) for r in store.sql.read(sql)]  # noqa: SIM118


def test_a_report_names_only_well_formed_bssids() -> None:
    hb = agent_pb2.Heartbeat(condition=fleet_pb2.CONDITION_OK)
    hb.network.wifi.add(bssid="AA-BB-CC-00-11-22", signal_dbm=-61.5)
    hb.network.wifi.add(bssid="not a mac", signal_dbm=-40)
    hb.network.wifi.add(bssid="aa:bb:cc:00:11:33", signal_dbm=0)
    report = report_from_pb(hb)
    assert report is not None
    assert report.wifi == (("aa:bb:cc:00:11:22", -61.5), ("aa:bb:cc:00:11:33", None))
    # A heartbeat between full reports says nothing of the Wi-Fi.
    between = report_from_pb(agent_pb2.Heartbeat(condition=fleet_pb2.CONDITION_OK))
    assert between is not None and between.wifi == ()


def test_associations_follow_full_reports_and_bssids_keep_their_last_sighting(
    store: Stores,
) -> None:
    for device in ("p1", "p2"):
        store.devices.device_connected(ident(device), 1, 90, 100.0)
    store.devices.record_messages(
        [
            _beat("p1", 1, 100.0, b"\x01", (("aa:bb:cc:00:11:22", -60.0),)),
            _beat("p2", 1, 101.0, b"\x01", (("aa:bb:cc:00:11:22", -70.0),)),
        ]
    )
    assert _rows(store, "SELECT device_id, bssid, signal_dbm FROM device_wifi ORDER BY 1") == [
        ("p1", "aa:bb:cc:00:11:22", -60.0),
        ("p2", "aa:bb:cc:00:11:22", -70.0),
    ]
    # p1 roams; p2 sends a heartbeat without a full report (its association stands),
    # then a full report without Wi-Fi (it is no longer associated).
    store.devices.record_messages(
        [
            _beat("p1", 2, 200.0, b"\x01", (("aa:bb:cc:00:11:99", None),)),
            _beat("p2", 2, 201.0, b"", ()),
        ]
    )
    assert _rows(store, "SELECT device_id, bssid FROM device_wifi ORDER BY 1") == [
        ("p1", "aa:bb:cc:00:11:99"),
        ("p2", "aa:bb:cc:00:11:22"),
    ]
    store.devices.record_messages([_beat("p2", 3, 300.0, b"\x01", ())])
    assert _rows(store, "SELECT device_id FROM device_wifi") == [("p1",)]
    assert _rows(store, "SELECT bssid, seen_at FROM bssid_seen ORDER BY 1") == [
        ("aa:bb:cc:00:11:22", 101.0),
        ("aa:bb:cc:00:11:99", 200.0),
    ]
