"""Prometheus metrics of the controller.

Fleet gauges are computed from the store at scrape time, per school (and kind,
status or verdict): series grow with schools, never with devices, and every known school
has all of them, at 0 where it has no such device. Ingest figures are plain counters and
a histogram updated as things happen; a labelled counter is created at 0 for every value
it can take, so that ``increase()`` sees its first step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from inventory.model import Condition, DeviceKind, KindCount, SchoolReports

log = logging.getLogger(__name__)

# Why a device stream ends (controller/fleet/sessions.py, admission.py, api/agent_service.py,
# api/admin_enroll.py, api/renewal.py); docs/metrics.md lists the same.
STREAM_CLOSE_REASONS = (
    "agent_closed",
    "replaced",
    "slow_reader",
    "protocol_error",
    "read_error",
    "cancelled",
    "shutdown",
    "unauthenticated",
    "not_enrolled",
    "wrong_school",
    "replaced_certificate",
    "decommissioned",
    "moved",
    "ca_retired",
    "renewal_flood",
)


class FleetFigures(Protocol):
    """The store's queries the fleet collector reads."""

    def fleet_counts(self, now: float, school_id: str | None = None) -> list[KindCount]: ...

    def school_reports(self, now: float) -> list[SchoolReports]: ...


class FleetCollector(Collector):
    """Devices by school, kind and status, and streams connected, read at scrape."""

    def __init__(
        self,
        store: FleetFigures,
        school_ids: Callable[[], list[str]],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        # Every school known (inventory, devices, lessons): each has its series.
        self._school_ids = school_ids
        self._now = now

    def describe(self) -> Iterator[Metric]:
        # Describing without collecting keeps registration from touching the store.
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        devices = GaugeMetricFamily(
            "schoolfleet_devices",
            "Managed devices by school, kind and status (online: stream up, heartbeat on time).",
            labels=["school", "kind", "status"],
        )
        conditions = GaugeMetricFamily(
            "schoolfleet_device_conditions",
            "Online devices by school and their own verdict (ok, degraded, critical).",
            labels=["school", "condition"],
        )
        missing = GaugeMetricFamily(
            "schoolfleet_device_messages_missing",
            "Messages never received from a school's devices (sequence numbers skipped).",
            labels=["school"],
        )
        dropped = GaugeMetricFamily(
            "schoolfleet_device_spool_dropped",
            "Heartbeats a school's devices dropped from full offline spools, as reported.",
            labels=["school"],
        )
        return devices, conditions, missing, dropped

    def collect(self) -> Iterator[Metric]:
        devices, conditions, missing, dropped = self._families()
        now = self._now()
        try:
            known = self._school_ids()
            counts = self._store.fleet_counts(now)
            reports = {r.school_id: r for r in self._store.school_reports(now)}
        except StoreError as exc:
            # A scrape must not fail as a whole; the gap in the series shows it.
            log.error("fleet counts not read for /metrics: %s", exc)
            known, counts, reports = [], [], {}
        found = {(c.school_id, c.kind): c for c in counts}
        for school in sorted({*known, *(c.school_id for c in counts)}):
            for kind in DeviceKind:
                c = found.get((school, kind))
                devices.add_metric([school, kind.value, "online"], c.online if c else 0)
                devices.add_metric([school, kind.value, "offline"], c.offline if c else 0)
            report = reports.get(school)
            for condition in Condition:
                n = report.conditions.get(condition, 0) if report else 0
                conditions.add_metric([school, condition.value], n)
            missing.add_metric([school], report.messages_missing if report else 0)
            dropped.add_metric([school], report.spool_dropped if report else 0)
        yield from (devices, conditions, missing, dropped)


class ControllerMetrics:
    """The controller's own figures, registered on the given registry: each controller
    sharing a store exports its own (summed over controllers, they count each stream
    and heartbeat once)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected_streams = Gauge(
            "schoolfleet_connected_streams",
            "Device streams open on this controller.",
            registry=registry,
        )
        self.heartbeats_received = Counter(
            "schoolfleet_heartbeats_received",
            "Heartbeats received on device streams.",
            registry=registry,
        )
        self.heartbeats_stored = Counter(
            "schoolfleet_heartbeats_stored",
            "Heartbeats written to the store (duplicates included, they are acked too).",
            registry=registry,
        )
        self.flush_seconds = Histogram(
            "schoolfleet_store_flush_seconds",
            "Time to write one heartbeat batch to the store.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.flush_batch = Histogram(
            "schoolfleet_store_flush_batch_size",
            "Heartbeats per batch written to the store.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=registry,
        )
        self.streams_closed = Counter(
            "schoolfleet_streams_closed",
            "Device streams ended, by reason.",
            labelnames=["reason"],
            registry=registry,
        )
        for reason in STREAM_CLOSE_REASONS:
            self.streams_closed.labels(reason)

        self.admin_denied = Counter(
            "schoolfleet_admin_denied",
            "schoolctl calls refused: no or an unaccepted token, or a role or school "
            "that does not allow the action.",
            labelnames=["action"],
            registry=registry,
        )

    def count_denied(self, action: str) -> None:
        """Counts one refused admin call."""
        self.admin_denied.labels(action).inc()

    def observe_flush(self, rows: int, seconds: float) -> None:
        """Records one stored batch."""
        self.heartbeats_stored.inc(rows)
        self.flush_seconds.observe(seconds)
        self.flush_batch.observe(rows)
