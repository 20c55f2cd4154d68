"""Access points and servers by school and state, for central ops: read from the
store at scrape time.

Series grow with schools and a fixed set of states, never with access points or
servers: a school has three ``schoolfleet_access_points`` series (up, down,
unknown) however many access points it has, and one
``schoolfleet_devices_on_unknown_bssids`` however many BSSIDs its devices name.
Every known school has every series, at 0 where it has nothing of the kind, so that
lists of schools are complete.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from controller.infra.store import InfraCensus
from inventory.infra import TargetKind, UnknownBssid

log = logging.getLogger(__name__)

# An access point no device reported for this long is flagged (issue 9: "a day").
UNSEEN_AFTER = 86_400.0
_STATES = ("up", "down", "unknown")


class InfraFigures(Protocol):
    """The store's queries the infrastructure collector reads."""

    def infra_census(self, seen_since: float) -> list[InfraCensus]: ...

    def unknown_bssids(self, schools: frozenset[str] | None) -> list[UnknownBssid]: ...


class InfraCollector(Collector):
    """``schoolfleet_access_points``, ``schoolfleet_servers``,
    ``schoolfleet_access_points_unseen`` and ``schoolfleet_devices_on_unknown_bssids``,
    by school."""

    def __init__(
        self,
        store: InfraFigures,
        school_ids: Callable[[], list[str]],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        # Every school known (inventory, devices, lessons): each has its series.
        self._school_ids = school_ids
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
            known = self._school_ids()
            census = self._store.infra_census(self._now() - UNSEEN_AFTER)
            unknown = self._store.unknown_bssids(None)
        except StoreError as exc:
            log.error("infrastructure counts not read for /metrics: %s", exc)
            return
        found = {(c.school_id, c.kind): c for c in census}
        devices: Counter[str] = Counter()
        for u in unknown:
            devices[u.school_id] += u.devices
        schools = sorted({*known, *(c.school_id for c in census), *devices})
        for school in schools:
            for kind, family in ((TargetKind.AP, aps), (TargetKind.SERVER, servers)):
                c = found.get((school, kind))
                for state, count in zip(_STATES, _counts(c), strict=True):
                    family.add_metric([school, state], count)
            ap = found.get((school, TargetKind.AP))
            unseen.add_metric([school], ap.unseen if ap else 0)
            on_unknown.add_metric([school], devices[school])
        yield from (aps, servers, unseen, on_unknown)


def _counts(c: InfraCensus | None) -> tuple[int, int, int]:
    return (c.up, c.down, c.unknown) if c else (0, 0, 0)
