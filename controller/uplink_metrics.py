"""Prometheus figures of the uplink checks: each school's measured uplink, read from
the store at scrape (one series per school), and checks counted by result."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from controller.store.uplink_protocol import UplinkStore

log = logging.getLogger(__name__)


class UplinkCollector(Collector):
    """``schoolfleet_school_uplink_mbps{school}``: the latest measurement of each school."""

    def __init__(self, store: UplinkStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "schoolfleet_school_uplink_mbps",
            "A school's uplink in Mbit/s, as its latest successful check measured it.",
            labels=["school"],
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            measured = self._store.latest_uplink_checks(measured=True)
        except StoreError as exc:
            log.error("uplink measurements not read for /metrics: %s", exc)
            measured = []
        for check in measured:
            if check.mbps is not None:
                family.add_metric([check.school_id], check.mbps)
        yield family


class UplinkMetrics:
    """Checks counted as they end."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.checks = Counter(
            "schoolfleet_uplink_checks",
            "Uplink checks ended, by result (ok: a measurement; failed: none).",
            labelnames=["result"],
            registry=registry,
        )
        # Both series exist from the start, so rate() and alerts see a zero, not a gap.
        for result in ("ok", "failed"):
            self.checks.labels(result)

    def ended(self, ok: bool) -> None:
        """Counts one ended check."""
        self.checks.labels("ok" if ok else "failed").inc()
