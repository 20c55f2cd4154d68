"""Rollout figures for central ops: rollouts by state, hosts by outcome, wave durations,
and the progress of each rollout running now.

The city-wide gauges sum every unfinished rollout, read from the store at scrape time.
The per-rollout ones carry a ``rollout`` label, the only label that names one thing:
they exist for the newest ``PER_ROLLOUT_MAX`` unfinished rollouts only and end with
them, so their number stays small whatever the history (schoolctl rollout list has
every rollout).
"""

from __future__ import annotations

import logging
import re
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from controller.rollouts.store import RolloutQuery, RolloutStore
from inventory.rollouts import HostOutcome, RolloutState

log = logging.getLogger(__name__)

# A wave of a few hosts takes tens of seconds; a city-wide wave, hours.
WAVE_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
_ACTIVE = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})
PER_ROLLOUT_MAX = 50
# How pick_wave (inventory/school_day.py) words the hosts that wait, by reason.
_WAITING = (
    ("lessons", re.compile(r"(\d+) in rooms with lessons")),
    ("maintenance-window", re.compile(r"(\d+) outside their school's maintenance window")),
)


def waiting_hosts(waiting: str) -> dict[str, int]:
    """Hosts that wait for their wave, by reason (lessons, maintenance-window), from a
    rollout's ``waiting`` text; 0 for a reason it does not name."""
    found = {}
    for reason, pattern in _WAITING:
        match = pattern.search(waiting)
        found[reason] = int(match[1]) if match else 0
    return found


class RolloutMetrics:
    """What the engine counts as it goes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._waves = Histogram(
            "schoolfleet_rollout_wave_duration_seconds",
            "How long each rollout wave took, from its start to its last host's result.",
            buckets=WAVE_BUCKETS,
            registry=registry,
        )
        self._hosts = Counter(
            "schoolfleet_rollout_host_results",
            "Hosts that finished a rollout wave, by outcome: ok, changed, failed, "
            "unreachable, cancelled, interrupted.",
            labelnames=["outcome"],
            registry=registry,
        )
        self._finished = Counter(
            "schoolfleet_rollouts_finished",
            "Rollouts that ended, by how: done, done-unreached, halted, aborted.",
            labelnames=["state"],
            registry=registry,
        )
        self._slices = Counter(
            "schoolfleet_rollout_slices",
            "Slices of rollout waves this controller ran, by what became of their "
            "results: stored; refused (another controller claimed the slice meanwhile); "
            "lost (the claim was lost, or given up as this controller stopped, before "
            "the slice ended).",
            labelnames=["result"],
            registry=registry,
        )
        for result in ("stored", "refused", "lost"):
            self._slices.labels(result)
        for outcome in HostOutcome:
            if outcome.settled:
                self._hosts.labels(outcome.value)
        for state in RolloutState:
            if state.final:
                self._finished.labels(state.value)

    def wave_done(self, seconds: float, outcomes: list[HostOutcome]) -> None:
        self._waves.observe(seconds)
        for outcome, count in Tally(outcomes).items():
            self._hosts.labels(outcome.value).inc(count)

    def slice_done(self, result: str) -> None:
        self._slices.labels(result).inc()

    def finished(self, state: RolloutState) -> None:
        self._finished.labels(state.value).inc()


class RolloutCollector(Collector):
    """Unfinished rollouts by state, and their hosts by outcome, read at scrape."""

    def __init__(self, store: RolloutStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "schoolfleet_rollouts",
                "Rollouts not yet finished, by state: running, paused.",
                labels=["state"],
            ),
            GaugeMetricFamily(
                "schoolfleet_rollout_hosts",
                "Hosts of unfinished rollouts by outcome: pending, running, ok, changed, "
                "failed, unreachable, cancelled, interrupted.",
                labels=["outcome"],
            ),
            GaugeMetricFamily(
                "schoolfleet_rollout_info",
                "1 for each unfinished rollout (the newest 50), with its playbook and "
                "state: running, paused.",
                labels=["rollout", "playbook", "state"],
            ),
            GaugeMetricFamily(
                "schoolfleet_rollout_progress",
                "Hosts of each unfinished rollout (the newest 50) by outcome: pending, "
                "running, ok, changed, failed, unreachable, cancelled, interrupted.",
                labels=["rollout", "outcome"],
            ),
            GaugeMetricFamily(
                "schoolfleet_rollout_waiting_hosts",
                "Pending hosts of each unfinished rollout (the newest 50) that its last "
                "wave could not take, by why: lessons, maintenance-window.",
                labels=["rollout", "reason"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        rollouts, hosts, info, progress, waiting = self._families()
        try:
            active = self._store.list_rollouts(RolloutQuery(states=_ACTIVE, limit=10_000))
        except StoreError as exc:
            log.error("rollouts not read for /metrics: %s", exc)
            active = []
        by_state = Tally(r.state for r in active)
        by_outcome: Tally[HostOutcome] = Tally()
        for record in active:
            by_outcome.update(record.counts)
        for state in sorted(_ACTIVE):
            rollouts.add_metric([state.value], by_state[state])
        for outcome in HostOutcome:
            hosts.add_metric([outcome.value], by_outcome[outcome])
        # list_rollouts gives the newest first.
        for record in active[:PER_ROLLOUT_MAX]:
            rid = str(record.rollout_id)
            info.add_metric([rid, record.spec.playbook, record.state.value], 1)
            for outcome in HostOutcome:
                progress.add_metric([rid, outcome.value], record.counts.get(outcome, 0))
            for reason, count in waiting_hosts(record.waiting).items():
                waiting.add_metric([rid, reason], count)
        yield from (rollouts, hosts, info, progress, waiting)
