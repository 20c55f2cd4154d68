"""Access points and servers by school and state, for central ops: read from the
store at scrape time.

Series grow with schools and a fixed set of states, never with access points or
servers: a school has three ``schoolfleet_access_points`` series (up, down,
unknown) however many access points it has, and one
``schoolfleet_devices_on_unknown_bssids`` however many BSSIDs its devices name.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
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
    """``schoolfleet_access_points``, ``schoolfleet_servers``,
    ``schoolfleet_access_points_unseen`` and ``schoolfleet_devices_on_unknown_bssids``,
    by school."""

    def __init__(self, store: InfraStore, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._now = now

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
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
            GaugeMetricFamily(
                "schoolfleet_devices_on_unknown_bssids",
                "Devices whose latest report names a Wi-Fi BSSID no access point in the "
                "inventory has (a missing inventory row, or an access point not ours).",
                labels=["school"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        aps, servers, unseen, on_unknown = self._families()
        try:
            census = self._store.infra_census(self._now() - UNSEEN_AFTER)
            unknown = self._store.unknown_bssids(None)
        except StoreError as exc:
            log.error("infrastructure counts not read for /metrics: %s", exc)
            census, unknown = [], []
        # 0 for a school with access points, rather than no series.
        devices: Counter[str] = Counter()
        for c in census:
            family = aps if c.kind is TargetKind.AP else servers
            for state, count in _states(c):
                family.add_metric([c.school_id, state], count)
            if c.kind is TargetKind.AP:
                unseen.add_metric([c.school_id], c.unseen)
                devices[c.school_id] += 0
        for u in unknown:
            devices[u.school_id] += u.devices
        for school_id, count in sorted(devices.items()):
            on_unknown.add_metric([school_id], count)
        yield aps
        yield servers
        yield unseen
        yield on_unknown


def _states(c: InfraCensus) -> tuple[tuple[str, int], ...]:
    return (("up", c.up), ("down", c.down), ("unknown", c.unknown))
