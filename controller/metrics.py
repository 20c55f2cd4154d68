"""Prometheus metrics of the controller.

Fleet gauges are computed from the store at scrape time, per school (and kind,
status or verdict): series grow with schools, never with devices. Ingest figures are plain
counters and a histogram updated as things happen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from controller.store import DeviceStore
from inventory.model import Condition

log = logging.getLogger(__name__)


class FleetCollector(Collector):
    """Devices by school, kind and status, and streams connected, read at scrape."""

    def __init__(
        self,
        store: DeviceStore,
        streams: Callable[[], int],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._streams = streams
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
        streams = GaugeMetricFamily(
            "schoolfleet_connected_streams", "Device streams open on this controller."
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
        return devices, streams, conditions, missing, dropped

    def collect(self) -> Iterator[Metric]:
        devices, streams, conditions, missing, dropped = self._families()
        now = self._now()
        try:
            counts = self._store.fleet_counts(now)
            schools = self._store.school_reports(now)
        except StoreError as exc:
            # A scrape must not fail as a whole; the gap in the series shows it.
            log.error("fleet counts not read for /metrics: %s", exc)
            counts, schools = [], []
        for c in counts:
            devices.add_metric([c.school_id, c.kind.value, "online"], c.online)
            devices.add_metric([c.school_id, c.kind.value, "offline"], c.offline)
        for school in schools:
            for condition in Condition:
                conditions.add_metric(
                    [school.school_id, condition.value], school.conditions.get(condition, 0)
                )
            missing.add_metric([school.school_id], school.messages_missing)
            dropped.add_metric([school.school_id], school.spool_dropped)
        streams.add_metric([], self._streams())
        yield from (devices, streams, conditions, missing, dropped)


class ControllerMetrics:
    """The controller's own figures, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
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
