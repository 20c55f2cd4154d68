"""One lease held while this controller runs, and the work it guards run only then.

The keeper asks for the lease every ``renew_every`` seconds. While the store says it
holds the lease, the work runs; the moment it does not (another holder, the store
unreachable), the work is cancelled. The keeper trusts its own clock only to stop
early, never to act late: the lease counts as held until the time the last successful
request *started* plus the lease's length less a margin, so however long a request
hangs or the process stalls, the work has stopped before the database lets another
controller take the lease. A holder that comes back from a stall finds a new epoch
and starts over as a follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.errors import StoreError
from controller.leases.store import Lease, LeaseStore
from controller.offload import Offload

log = logging.getLogger(__name__)

Work = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How long a lease lasts and how often it is renewed (seconds)."""

    ttl: float = 10.0
    renew_every: float = 2.0
    # Given up this long before the database would let another controller take it:
    # room for the two clocks' drift over one lease.
    margin: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_every < self.ttl - self.margin or self.margin < 0:
            raise ValueError("a lease must be renewed well within its length")


class LeaseMetrics:
    """Which leases this controller holds, and how often they changed hands here."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.held = Gauge(
            "schoolfleet_lease_held",
            "1 while this controller holds the lease on a kind of work that must run "
            "once among the controllers, else 0.",
            ["lease"],
            registry=registry,
        )
        self.taken = Counter(
            "schoolfleet_lease_taken",
            "Times this controller took a lease it did not hold.",
            ["lease"],
            registry=registry,
        )


class LeaseKeeper:
    """Holds the lease ``name`` for ``holder`` when it can, and runs ``work`` while
    it does; ``run()`` until cancelled, then ``close()``."""

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        holder: str,
        work: Work,
        executor: Executor | None,
        metrics: LeaseMetrics,
        timing: LeaseTiming = LeaseTiming(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.name = name
        self._holder = holder
        self._work = work
        self._off = Offload(executor)
        self._timing = timing
        self._clock = clock
        self._held = metrics.held.labels(name)
        self._taken = metrics.taken.labels(name)
        self._held.set(0)
        self._lease: Lease | None = None
        self._valid_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    @property
    def lease(self) -> Lease | None:
        """The lease while it is safely held, else None."""
        if self._lease is not None and self._clock() < self._valid_until:
            return self._lease
        return None

    async def run(self) -> None:
        """Takes, renews and loses the lease until cancelled."""
        while True:
            await self._turn()
            left = self._valid_until - self._clock() if self._lease is not None else None
            delay = (
                self._timing.renew_every if left is None else min(self._timing.renew_every, left)
            )
            await asyncio.sleep(max(0.0, delay))

    async def _turn(self) -> None:
        asked_at = self._clock()
        deadline = self._valid_until - asked_at if self._lease is not None else self._timing.ttl
        try:
            lease = await asyncio.wait_for(
                self._off(self._store.take, self.name, self._holder, self._timing.ttl),
                timeout=max(0.01, deadline),
            )
        except (StoreError, TimeoutError) as exc:
            if self._lease is not None:
                log.warning("lease %s: cannot renew (%s); stopping its work", self.name, exc)
            lease = None
        if lease is None:
            await self._lose()
            return
        if self._lease is None or self._lease.epoch != lease.epoch:
            if self._lease is not None:
                await self._lose()
            self._taken.inc()
            log.info("lease %s taken epoch=%d holder=%s", self.name, lease.epoch, self._holder)
        self._lease = lease
        self._valid_until = asked_at + self._timing.ttl - self._timing.margin
        self._held.set(1)
        if self._task is None or self._task.done():
            # The work's loops survive their own errors; one that ended anyway starts
            # again while the lease is held.
            self._task = asyncio.create_task(self._work(), name=f"lease-{self.name}")
            self.changed.set()

    async def _lose(self) -> None:
        if self._lease is not None:
            log.info("lease %s lost epoch=%d", self.name, self._lease.epoch)
        self._lease = None
        self._held.set(0)
        await self._stop_work()

    async def _stop_work(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.changed.set()

    async def close(self) -> None:
        """Stops the work and gives the lease up, so that another controller takes it
        at once rather than after it expires."""
        await self._stop_work()
        lease, self._lease = self._lease, None
        self._held.set(0)
        if lease is not None:
            with contextlib.suppress(StoreError):
                await self._off(self._store.release, lease)
