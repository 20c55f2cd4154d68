"""Background loops that survive their own errors.

The Kubernetes controller's work-queue pattern, for the controller's reconcile loops
(the lesson dispatcher, the rollout engine, the probe schedule, the uplink checks): a
pass that fails is logged with its traceback, counted in
``schoolfleet_loop_failures_total{loop}`` and tried again after a backoff that doubles
with each failure in a row (jittered, capped), and starts over at the first pass that
succeeds. Nothing a pass raises ends its loop; only cancellation does. A store that is
down for an hour therefore costs a line a minute in the log, not a dead loop that
nobody notices until a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

# Every loop's series exists from the start, at 0: an alert on increase() sees the first.
LOOPS = ("lesson_dispatcher", "rollout_engine", "rollout_slices", "probes", "uplink_checks")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds before the next try after ``failures`` failed passes in a row."""

    first: float = 0.5
    cap: float = 60.0

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        # Jittered within [half, whole] so that loops failing on the same cause (the
        # store) do not retry in step.
        whole = min(self.cap, self.first * 2.0 ** min(max(failures, 1) - 1, 32))
        return whole * (0.5 + rand() / 2)


class LoopFailures:
    """``schoolfleet_loop_failures_total{loop}``: failed passes of each background loop."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._counter = Counter(
            "schoolfleet_loop_failures",
            "Passes of a background loop that failed (and were tried again), by loop.",
            ["loop"],
            registry=registry,
        )
        for loop in LOOPS:
            self._counter.labels(loop)

    def count(self, loop: str) -> None:
        self._counter.labels(loop).inc()


class Retry:
    """One loop's (or one work item's) failures in a row, and the wait they earn."""

    def __init__(
        self,
        loop: str,
        failures: LoopFailures | None,
        backoff: Backoff = Backoff(),
        what: str = "",
    ) -> None:
        self._loop = loop
        self._failures = failures
        self._backoff = backoff
        # Names the work item in the log (a rollout), if the loop has several.
        self._what = f" {what}" if what else ""
        self.in_a_row = 0

    def failed(self, exc: BaseException) -> float:
        """Counts and logs the failure; returns the seconds to wait before the next try."""
        self.in_a_row += 1
        if self._failures is not None:
            self._failures.count(self._loop)
        delay = self._backoff.delay(self.in_a_row)
        log.error(
            "loop pass failed loop=%s%s failures_in_a_row=%d retry_in=%.1fs",
            self._loop,
            self._what,
            self.in_a_row,
            delay,
            exc_info=exc,
        )
        return delay

    def succeeded(self) -> None:
        if self.in_a_row:
            log.info(
                "loop recovered loop=%s%s after_failures=%d", self._loop, self._what, self.in_a_row
            )
        self.in_a_row = 0

    async def one_pass(
        self, work: Callable[[], Awaitable[object]], wake: asyncio.Event, every: float
    ) -> None:
        """One pass of a loop that watches: ``work``, then a wait of ``every`` seconds
        (the backoff's after a failure) that ``wake`` cuts short. ``wake`` is cleared
        before the work, so that what sets it meanwhile is seen at once."""
        wake.clear()
        try:
            await work()
            self.succeeded()
            wait = every
        except Exception as exc:
            wait = self.failed(exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait)
