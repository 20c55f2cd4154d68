"""The probe schedule: every access point and server probed once per interval.

A reconcile loop over the store: each cycle reads the targets, and probes each at its
own offset into the interval, a hash of its id. So 70,000 targets are spread evenly
instead of starting at once, and a target is probed at the same second of every cycle
(also after a restart: cycles are aligned to the clock). Targets due before the
controller started wait for the next cycle rather than all going at once.

At most ``concurrency`` probes run at once, each in a thread of the prober's own pool
(probes block; the store's threads stay free). A probe that outlives its deadline is
recorded as down and the schedule goes on without it; its thread keeps its slot until
its own timeouts end it, and the target is not probed again until then. Results are
stored in batches. A failed read of the targets is retried with backoff within the
cycle, and results the store refused are kept (up to ``_KEPT_MAX``) and stored by a
later flush (controller/loops.py). A probe's steps are timed into
``schoolfleet_probe_duration_seconds{kind, check}`` (check: ``tcp`` for resolution and
connect, ``ssh`` for everything after).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from prometheus_client import CollectorRegistry, Histogram

from controller.infra.probe_check import Checked, Checker, ProbeSettings, ProbeStopped
from controller.loops import LoopFailures, Retry
from controller.offload import Offload
from inventory.infra import ProbeResult, ProbeTarget

log = logging.getLogger(__name__)
T = TypeVar("T")

# The store's side: the targets with their pinned keys, and where results go.
TargetSource = Callable[[], Sequence[ProbeTarget]]
ResultWriter = Callable[[Sequence[ProbeResult]], None]

# From a loopback connect (~0.1 ms) to a command that runs into its timeout.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_MAX = 500
_FLUSH_INTERVAL = 1.0
# Results kept while the store refuses them; past it the oldest go (a later cycle
# probes their targets again).
_KEPT_MAX = 100_000
_TOGETHER = 0.005


def offset(target_id: str, interval: float) -> float:
    """Seconds into every cycle at which ``target_id`` is probed: uniform, stable."""
    digest = hashlib.blake2b(target_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


def cycle_start(now: float, interval: float) -> float:
    """The start of the cycle ``now`` is in (cycles are aligned to the clock)."""
    return math.floor(now / interval) * interval


def plan(
    targets: Iterable[ProbeTarget], start: float, interval: float, not_before: float
) -> list[tuple[float, ProbeTarget]]:
    """The cycle starting at ``start``: each target with when it is due, in time order;
    targets due before ``not_before`` are left out (they come in the next cycle)."""
    due = [(start + offset(t.target_id, interval), t) for t in targets]
    return sorted((d for d in due if d[0] >= not_before), key=lambda d: d[0])


class ProbeMetrics:
    """How long probes' steps take, by target kind and check."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "schoolfleet_probe_duration_seconds",
            "Duration of a probe's steps: tcp (name resolution and TCP connect to the "
            "management port), ssh (SSH handshake, login and facts command).",
            ["kind", "check"],
            buckets=_BUCKETS,
            registry=registry,
        )

    def observe(self, checked: Checked) -> None:
        kind = str(checked.result.kind)
        self._duration.labels(kind, "tcp").observe(checked.tcp_seconds)
        if checked.ssh_seconds is not None:
            self._duration.labels(kind, "ssh").observe(checked.ssh_seconds)


class Prober:
    """Runs the probe schedule until closed; see the module's docstring."""

    def __init__(
        self,
        targets: TargetSource,
        record: ResultWriter,
        settings: ProbeSettings,
        executor: Executor,
        registry: CollectorRegistry,
        *,
        check: Callable[[ProbeTarget], Checked] | None = None,
        now: Callable[[], float] = time.time,
        batch_max: int = _BATCH_MAX,
        flush_interval: float = _FLUSH_INTERVAL,
        failures: LoopFailures | None = None,
    ) -> None:
        if settings.concurrency < 1 or settings.interval <= 0:
            raise ValueError("probe concurrency must be >= 1 and the interval positive")
        self._targets = targets
        self._record = record
        self._settings = settings
        # For the store's calls; probes have their own pool.
        self._off = Offload(executor)
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="probe")
        self._metrics = ProbeMetrics(registry)
        self._checker = Checker(settings, now=now)
        self._check = check or self._checker.check
        self._now = now
        self._batch_max = batch_max
        self._flush_interval = flush_interval
        self._failures = failures
        # One flush at a time: a batch leaves the list only once stored.
        self._flushing = asyncio.Lock()
        self._slots = asyncio.Semaphore(settings.concurrency)
        # Targets whose probe thread has not returned yet (deadline or not).
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[ProbeResult] = []
        self._flush_now = asyncio.Event()
        self._closing = asyncio.Event()

    async def run(self) -> None:
        """Cycle after cycle until ``close()``; a store failure is logged, not fatal."""
        interval = self._settings.interval
        flusher = asyncio.create_task(self._flush_loop(), name="probe-results")
        try:
            not_before = self._now()
            start = cycle_start(not_before, interval)
            retry = Retry("probes", self._failures)
            while not self._closing.is_set():
                targets = await self._read_targets(retry, start + interval)
                await self._launch(plan(targets, start, interval, not_before))
                start += interval
                not_before = start
                now = self._now()
                if now >= start + interval:
                    log.warning(
                        "probe cycle overran by %.0fs targets=%d concurrency=%d",
                        now - start,
                        len(targets),
                        self._settings.concurrency,
                    )
                    start, not_before = cycle_start(now, interval), now
                await self._until(start)
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    async def probe_now(self, targets: Sequence[ProbeTarget]) -> None:
        """Probes ``targets`` at once (``concurrency`` at a time), and returns when every
        result is stored. For a probe on demand and for bench/probes.py."""
        now = self._now()
        await self._launch([(now, t) for t in targets])
        await self._settle()
        await self._flush()

    async def close(self) -> None:
        """Stops scheduling, cuts the probes running short (they are not recorded), stores
        the results gathered and stops the probe threads: a shutdown does not wait for a
        silent target's banner timeout."""
        self._closing.set()
        self._checker.stop()
        await self._settle()
        try:
            await self._flush()
        except Exception:
            log.exception("probe results not stored at shutdown count=%d", len(self._pending))
        # The threads end by their own timeouts; waiting for them closes every transport.
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)

    async def _read_targets(self, retry: Retry, cycle_end: float) -> list[ProbeTarget]:
        """The targets, tried again after a backoff while the store refuses, until the
        cycle ends (nothing is probed in it then) or ``close()``."""
        while True:
            try:
                targets = list(await self._off(self._targets))
            except Exception as exc:
                wait = retry.failed(exc)
                if await self._until(min(cycle_end, self._now() + wait)) or (
                    self._now() >= cycle_end
                ):
                    return []
                continue
            retry.succeeded()
            return targets

    async def _until(self, when: float) -> bool:
        """Waits until ``when`` (wall clock) or ``close()``; True if closing."""
        delay = when - self._now()
        # Targets due within a few milliseconds of each other go together: one wait each
        # would cost more than it spreads.
        if delay > _TOGETHER:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        return self._closing.is_set()

    async def _launch(self, planned: Sequence[tuple[float, ProbeTarget]]) -> None:
        skipped = 0
        for due, target in planned:
            if await self._until(due):
                return
            if target.target_id in self._busy:
                skipped += 1
                continue
            await self._slots.acquire()
            self._busy.add(target.target_id)
            task = asyncio.create_task(self._probe(target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if skipped:
            log.warning("probes skipped: previous probe still running count=%d", skipped)

    async def _settle(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def _probe(self, target: ProbeTarget) -> None:
        started = self._now()
        future = asyncio.get_running_loop().run_in_executor(self._pool, self._check, target)

        def done(_: object) -> None:
            self._busy.discard(target.target_id)
            self._slots.release()

        future.add_done_callback(done)
        deadline = self._settings.deadline
        try:
            checked = await asyncio.wait_for(asyncio.shield(future), deadline)
        except ProbeStopped:
            return
        except TimeoutError:
            result = self._down(target, f"probe did not finish within {deadline:g}s", started)
            log.warning("probe abandoned target=%s deadline=%gs", target.target_id, deadline)
        except Exception as exc:
            # A bug of ours, not the target's doing: recorded, and the schedule goes on.
            log.exception("probe failed target=%s", target.target_id)
            result = self._down(target, f"probe failed: {type(exc).__name__}: {exc}", started)
        else:
            self._metrics.observe(checked)
            result = checked.result
        self._pending.append(result)
        if len(self._pending) >= self._batch_max:
            self._flush_now.set()

    def _down(self, target: ProbeTarget, reason: str, started: float) -> ProbeResult:
        return ProbeResult(
            target.kind, target.target_id, False, reason, self._now() - started, started
        )

    async def _flush_loop(self) -> None:
        retry = Retry("probes", self._failures)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self._flush_interval)
            self._flush_now.clear()
            try:
                await self._flush()
            except Exception as exc:
                await asyncio.sleep(retry.failed(exc))
            else:
                retry.succeeded()

    async def _flush(self) -> None:
        """Stores the results gathered; raises if the store refuses a batch, which is
        kept with the rest for the next flush."""
        async with self._flushing:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self._batch_max]
            try:
                await self._off(self._record, batch)
            except Exception:
                if len(self._pending) > _KEPT_MAX:
                    dropped = len(self._pending) - _KEPT_MAX
                    del self._pending[:dropped]
                    log.warning("probe results dropped: the store refuses them count=%d", dropped)
                raise
            del self._pending[: len(batch)]
