"""Access points and servers by school and state, for central ops: read from the
store at scrape time.

Series grow with schools and a fixed set of states, never with access points or
servers: a school has three ``schoolfleet_access_points`` series (up, down,
unknown) however many access points it has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from controller.store.infra_protocol import InfraCensus, InfraStore
from inventory.infra import TargetKind

log = logging.getLogger(__name__)

# An access point no device reported for this long is flagged (issue 9: "a day").
UNSEEN_AFTER = 86_400.0


class InfraCollector(Collector):
    """``schoolfleet_access_points``, ``schoolfleet_servers`` and
    ``schoolfleet_access_points_unseen``, by school."""

    def __init__(self, store: InfraStore, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._now = now

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "schoolfleet_access_points",
                "Access points in the inventory by school and their latest probe: up, down, "
                "or unknown (never probed).",
                labels=["school", "state"],
            ),
            GaugeMetricFamily(
                "schoolfleet_servers",
                "School servers in the inventory by school and their latest probe: up, down, "
                "or unknown (never probed).",
                labels=["school", "state"],
            ),
            GaugeMetricFamily(
                "schoolfleet_access_points_unseen",
                "Access points in the inventory that no device reported seeing (by BSSID) "
                "in the last 24 hours.",
                labels=["school"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        aps, servers, unseen = self._families()
        try:
            census = self._store.infra_census(self._now() - UNSEEN_AFTER)
        except StoreError as exc:
            log.error("infrastructure counts not read for /metrics: %s", exc)
            census = []
        for c in census:
            family = aps if c.kind is TargetKind.AP else servers
            for state, count in _states(c):
                family.add_metric([c.school_id, state], count)
            if c.kind is TargetKind.AP:
                unseen.add_metric([c.school_id], c.unseen)
        yield aps
        yield servers
        yield unseen


def _states(c: InfraCensus) -> tuple[tuple[str, int], ...]:
    return (("up", c.up), ("down", c.down), ("unknown", c.unknown))
