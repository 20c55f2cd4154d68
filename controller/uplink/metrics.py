"""Prometheus figures of the uplink checks, read from the store at scrape, one series
per school and figure: its latest measurement, whether it was ever measured, and its
failed checks since; and checks counted by result as they end.

Every known school has the last two, so a school whose checks always fail, or that
was never checked, is on every list and alert, not missing from them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from inventory.uplink import UplinkCheck

log = logging.getLogger(__name__)


class UplinkFigures(Protocol):
    """The store's queries the uplink collector reads."""

    def latest_uplink_checks(
        self,
        school_id: str | None = None,
        schools: frozenset[str] | None = None,
        *,
        measured: bool = False,
    ) -> list[UplinkCheck]: ...

    def uplink_failures(self) -> dict[str, int]: ...


class UplinkCollector(Collector):
    """``schoolfleet_school_uplink_mbps``, ``_measured`` and ``_failures`` by school."""

    def __init__(self, store: UplinkFigures, school_ids: Callable[[], list[str]]) -> None:
        self._store = store
        # Every school known (inventory, devices, lessons): each has its series.
        self._school_ids = school_ids

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "schoolfleet_school_uplink_mbps",
                "A school's uplink in Mbit/s, as its latest successful check measured it.",
                labels=["school"],
            ),
            GaugeMetricFamily(
                "schoolfleet_school_uplink_measured",
                "1 if the school's uplink has a stored measurement, 0 if it was never "
                "measured (never checked, or every check failed).",
                labels=["school"],
            ),
            GaugeMetricFamily(
                "schoolfleet_school_uplink_failures",
                "The school's failed uplink checks since its latest measurement (0 when "
                "its latest finished check measured).",
                labels=["school"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        mbps, measured, failures = self._families()
        try:
            known = self._school_ids()
            latest = self._store.latest_uplink_checks(measured=True)
            failed = self._store.uplink_failures()
        except StoreError as exc:
            log.error("uplink measurements not read for /metrics: %s", exc)
            return
        speeds = {c.school_id: c.mbps for c in latest if c.mbps is not None}
        for school, value in sorted(speeds.items()):
            mbps.add_metric([school], value)
        for school in sorted({*known, *failed, *speeds}):
            measured.add_metric([school], int(school in speeds))
            failures.add_metric([school], failed.get(school, 0))
        yield from (mbps, measured, failures)


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
