"""/metrics fleet series: per school, kind and status, never per device."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from controller.metrics import ControllerMetrics, FleetCollector
from controller.store import HeartbeatRow
from controller.store.sqlite import SqliteStore
from inventory.model import Condition, DeviceReport
from tests.test_store_sqlite import T0, beat, ident


def _series(registry: CollectorRegistry, prefix: str) -> dict[str, float]:
    lines = generate_latest(registry).decode().splitlines()
    out = {}
    for line in lines:
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_series_grow_with_schools_not_devices(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    registry = CollectorRegistry()
    ControllerMetrics(registry)
    registry.register(FleetCollector(store, lambda: 4, now=lambda: T0))
    for n in (10, 500):
        for i in range(n):
            store.device_connected(ident(f"d{i:04}", f"s{i % 2}"), i + 1, 90, T0)
        store.record_messages([beat(f"d{i:04}", 1, T0) for i in range(0, n, 2)])
        series = _series(registry, "schoolfleet_devices{")
        assert len(series) == 4  # 2 schools x 1 kind x 2 statuses, whatever n is
        assert series['schoolfleet_devices{kind="panel",school="s0",status="online"}'] == n // 2
        per_school = _series(registry, "schoolfleet_device_")
        assert len(per_school) == 2 * (3 + 1 + 1)  # conditions, missing, dropped per school
    assert _series(registry, "schoolfleet_connected_streams") == {
        "schoolfleet_connected_streams": 4
    }
    store.close()


def test_verdicts_and_losses_are_summed_per_school(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    registry = CollectorRegistry()
    registry.register(FleetCollector(store, lambda: 0, now=lambda: T0))
    for i, condition in enumerate([Condition.OK, Condition.CRITICAL, Condition.CRITICAL]):
        store.device_connected(ident(f"d{i}"), i + 1, 90, T0)
        report = DeviceReport(condition, (), spool_dropped=i)
        store.record_messages([HeartbeatRow(f"d{i}", 1, T0, beat(f"d{i}", 1, T0).health, report)])
    store.record_messages([beat("d0", 4, T0)])  # seqs 2 and 3 never arrived
    series = _series(registry, "schoolfleet_device_")
    assert series == {
        'schoolfleet_device_conditions{condition="ok",school="s1"}': 1,
        'schoolfleet_device_conditions{condition="degraded",school="s1"}': 0,
        'schoolfleet_device_conditions{condition="critical",school="s1"}': 2,
        'schoolfleet_device_messages_missing{school="s1"}': 2,
        'schoolfleet_device_spool_dropped{school="s1"}': 0 + 1 + 2,
    }
    store.close()
