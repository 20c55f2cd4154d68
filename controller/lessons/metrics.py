"""The lesson figures the city counts, per school, read from the store at scrape time:
today's lessons by state, the ones under way by whether a panel shows them, their
panels by result, and whether the school is in session.

Every known school has every series, at 0 where nothing happened, so a sum over
schools or a list of them is exact from the first scrape: a counter's series is born
at its first count, and ``increase()`` never sees that first step. Series grow with
schools and fixed sets of states and results, never with devices or lessons. Only the
launch-latency histogram counts as things happen, city-wide, from 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from controller.lessons.days import day_bounds
from controller.lessons.store import LessonCounts
from controller.store.rows import StoredLessonEvent
from inventory.lessons import EventKind, FailReason, LessonState

log = logging.getLogger(__name__)

# Seconds from a lesson's start to a panel's "launched"; 0 when it was on time.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# A school is in session from this long before its first lesson of the day to the end
# of its last: its devices are expected on, so an offline school is an emergency.
SESSION_MARGIN = 1800.0
UNDER_WAY = ("starting", "showing", "not-showing")
PANEL_RESULTS = ("launched", *(r.value for r in FailReason), "pending")


class LessonMetrics:
    """The launch-latency histogram, city-wide: a per-school one would cost 15 series a
    school for a figure the city reads as a whole."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._latency = Histogram(
            "schoolfleet_lesson_launch_latency_seconds",
            "From a lesson's scheduled start to a panel's launched (0 if before the start).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe_all(self, events: list[StoredLessonEvent]) -> None:
        for stored in events:
            self.observe(stored)

    def observe(self, stored: StoredLessonEvent) -> None:
        """Counts a lesson event stored for the first time."""
        e = stored.event
        if e.kind is EventKind.LAUNCHED:
            self._latency.observe(max(0.0, e.at - stored.starts_at))


def fill(
    schools: Iterable[str], values: Iterable[str], counts: Iterable[tuple[str, str, int]]
) -> dict[tuple[str, str], int]:
    """Every (school, value) pair at 0, then the counts found; a school or value the
    lists do not have (a school known since) is kept rather than lost."""
    table = {(s, v): 0 for s in schools for v in values}
    for school, value, n in counts:
        table[(school, value)] = table.get((school, value), 0) + n
    return table


class LessonCollector(Collector):
    """Today's lesson figures by school, read from the store at scrape."""

    def __init__(
        self,
        store: LessonCounts,
        school_ids: Callable[[], list[str]],
        zone: ZoneInfo,
        on_time: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        # Every school known (inventory, devices, lessons): each has its series.
        self._school_ids = school_ids
        self._zone = zone
        self._on_time = on_time
        self._now = now

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "schoolfleet_lessons_today",
                "Lessons starting today (the schools' time zone) by school and state: "
                "scheduled, dispatched, held, partly-held, failed, no-device.",
                labels=["school", "state"],
            ),
            GaugeMetricFamily(
                "schoolfleet_lessons_under_way",
                "Today's dispatched lessons not settled yet, by school and whether a panel "
                "shows them: starting, showing, not-showing (none by the on-time mark).",
                labels=["school", "state"],
            ),
            GaugeMetricFamily(
                "schoolfleet_lesson_panels_today",
                "Panels of today's dispatched lessons by school and result: launched, the "
                "reason a panel gave, not-reached (silent by the on-time mark), pending.",
                labels=["school", "result"],
            ),
            GaugeMetricFamily(
                "schoolfleet_school_in_session",
                "1 from 30 minutes before a school's first lesson today to its last "
                "lesson's end, else 0.",
                labels=["school"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        today, under_way, panels, session = self._families()
        now = self._now()
        since, until = day_bounds(now, self._zone)
        due = now - self._on_time
        try:
            schools = self._school_ids()
            counts = self._store.lesson_counts(since, until)
            started = self._store.lessons_under_way(since, until, due)
            results = self._store.lesson_panel_counts(since, until, due)
            spans = self._store.lesson_day_spans(since, until)
        except StoreError as exc:
            # A scrape must not fail as a whole; the gap in the series shows it.
            log.error("lesson counts not read for /metrics: %s", exc)
            return
        states = [s.value for s in LessonState]
        by_state = fill(schools, states, ((s, st.value, n) for s, st, n in counts))
        for family, table in (
            (today, by_state),
            (under_way, fill(schools, UNDER_WAY, started)),
            (panels, fill(schools, PANEL_RESULTS, results)),
        ):
            for (school, value), n in sorted(table.items()):
                family.add_metric([school, value], n)
        in_session = {s: 0 for s in schools}
        for school, first, last in spans:
            in_session[school] = int(first - SESSION_MARGIN <= now < last)
        for school, flag in sorted(in_session.items()):
            session.add_metric([school], flag)
        yield from (today, under_way, panels, session)
