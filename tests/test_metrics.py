"""/metrics fleet series: per school, kind and status, never per device."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from controller.metrics import ControllerMetrics, FleetCollector
from controller.store.sqlite import SqliteStore
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
    assert _series(registry, "schoolfleet_connected_streams") == {
        "schoolfleet_connected_streams": 4
    }
    store.close()
