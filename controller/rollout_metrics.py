"""Rollout figures for central ops: rollouts by state, hosts by outcome, wave durations.

Series grow with a fixed set of states and outcomes, never with rollouts or hosts:
the gauges sum every unfinished rollout, read from the store at scrape time.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.errors import StoreError
from controller.store.rollouts_protocol import RolloutQuery, RolloutStore
from inventory.rollouts import HostOutcome, RolloutState

log = logging.getLogger(__name__)

# A wave of a few hosts takes tens of seconds; a city-wide wave, hours.
WAVE_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
_ACTIVE = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})


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
            "unreachable, cancelled.",
            labelnames=["outcome"],
            registry=registry,
        )
        self._finished = Counter(
            "schoolfleet_rollouts_finished",
            "Rollouts that ended, by how: done, halted, aborted.",
            labelnames=["state"],
            registry=registry,
        )
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

    def finished(self, state: RolloutState) -> None:
        self._finished.labels(state.value).inc()


class RolloutCollector(Collector):
    """Unfinished rollouts by state, and their hosts by outcome, read at scrape."""

    def __init__(self, store: RolloutStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "schoolfleet_rollouts",
                "Rollouts not yet finished, by state: running, paused.",
                labels=["state"],
            ),
            GaugeMetricFamily(
                "schoolfleet_rollout_hosts",
                "Hosts of unfinished rollouts by outcome: pending, running, ok, changed, "
                "failed, unreachable, cancelled.",
                labels=["outcome"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        rollouts, hosts = self._families()
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
        yield rollouts
        yield hosts
