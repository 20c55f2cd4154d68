"""The lesson figures the city counts, per school: scheduled, launched, failed, held.

Counters move as things happen (a dispatch, a stored panel event, a settled lesson);
today's lessons by state are read from the store at scrape time. Series grow with
schools and a fixed set of states and reasons, never with devices or lessons.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from controller.store import Store, StoredLessonEvent
from inventory.lessons import EventKind, LessonState

log = logging.getLogger(__name__)

# Seconds from a lesson's start to a panel's "launched"; 0 when it was on time.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def day_bounds(now: float, zone: ZoneInfo) -> tuple[float, float]:
    """The start and end of ``now``'s day in the schools' time zone, as Unix seconds."""
    local = dt.datetime.fromtimestamp(now, zone)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=1, hours=2)).replace(hour=0)
    return start.timestamp(), end.timestamp()


class LessonMetrics:
    """Counters and the launch-latency histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._dispatched = Counter(
            "schoolfleet_lessons_dispatched",
            "Lessons whose LaunchLesson commands went out to their room's panels.",
            labelnames=["school"],
            registry=registry,
        )
        self._settled = Counter(
            "schoolfleet_lessons_settled",
            "Lessons that ended, by outcome: held, partly-held, failed, no-device.",
            labelnames=["school", "state"],
            registry=registry,
        )
        self._launches = Counter(
            "schoolfleet_lesson_launches",
            "Panels that showed a lesson (LessonEvent launched).",
            labelnames=["school"],
            registry=registry,
        )
        self._failures = Counter(
            "schoolfleet_lesson_failures",
            "Panels that could not show a lesson, by reason.",
            labelnames=["school", "reason"],
            registry=registry,
        )
        self._latency = Histogram(
            "schoolfleet_lesson_launch_latency_seconds",
            "From a lesson's scheduled start to a panel's launched (0 if before the start).",
            labelnames=["school"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def dispatched(self, school_id: str) -> None:
        self._dispatched.labels(school_id).inc()

    def settled(self, school_id: str, state: LessonState) -> None:
        self._settled.labels(school_id, state.value).inc()

    def observe_all(self, events: list[StoredLessonEvent]) -> None:
        for stored in events:
            self.observe(stored)

    def observe(self, stored: StoredLessonEvent) -> None:
        """Counts a lesson event stored for the first time."""
        e = stored.event
        if e.kind is EventKind.LAUNCHED:
            self._launches.labels(stored.school_id).inc()
            self._latency.labels(stored.school_id).observe(max(0.0, e.at - stored.starts_at))
        elif e.kind is EventKind.FAILED and e.reason is not None:
            self._failures.labels(stored.school_id, e.reason.value).inc()


class LessonCollector(Collector):
    """Today's lessons by school and state, read from the store at scrape."""

    def __init__(self, store: Store, zone: ZoneInfo, now: Callable[[], float] = time.time):
        self._store = store
        self._zone = zone
        self._now = now

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "schoolfleet_lessons_today",
            "Lessons starting today (the schools' time zone) by school and state: "
            "scheduled, dispatched, held, partly-held, failed, no-device.",
            labels=["school", "state"],
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            counts = self._store.lesson_counts(*day_bounds(self._now(), self._zone))
        except StoreError as exc:
            log.error("lesson counts not read for /metrics: %s", exc)
            counts = []
        for school_id, state, count in counts:
            family.add_metric([school_id, state.value], count)
        yield family
