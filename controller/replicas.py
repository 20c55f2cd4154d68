"""What lets several controllers share one store (PostgreSQL), and costs nothing to one
alone on SQLite: who this controller is among them, the bus between them, commands
relayed to whichever holds a device's stream, and the work that must run once held
under a lease each.

Alone on SQLite the bus is this process and every lease is this controller's at once,
so the same assembly serves both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from controller.api.stream_commands import OutboxResend, Sessions, deliver_here
from controller.leases.keeper import LeaseKeeper, LeaseMetrics, LeaseTiming, Work
from controller.lessons.dispatcher import Dispatcher
from controller.lessons.nudge import DispatchNudge
from controller.offload import Offload
from controller.relay.asking import Asking
from controller.relay.bus import Bus, LocalBus
from controller.relay.device_commands import DeviceCommands
from controller.relay.pg_bus import PgBus
from controller.store.pg_database import PgDatabase
from controller.stores import Stores

log = logging.getLogger(__name__)

# Every controller sends its streams' pending commands again when this comes: the
# dispatcher's new holder asks, since the old one may have died between storing a
# launch and relaying it.
RESEND = "schoolfleet_outbox_resend"

# The leases, by the work they guard.
DISPATCH = "lesson-dispatcher"
PROBES = "probes"
GAUGES = "store-gauges"


def replica_name() -> str:
    """This controller among those sharing the store: its host, its pid and a random
    part (a pid is reused after a restart; a lease must not be)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def bus_for(stores: Stores) -> Bus:
    """LISTEN/NOTIFY on PostgreSQL; this process alone on SQLite."""
    if isinstance(stores.sql, PgDatabase):
        return PgBus(stores.sql, stores.sql.connect_alone)
    return LocalBus()


async def _forever() -> None:
    await asyncio.Event().wait()


@dataclass
class Replica:
    """This controller's part among the controllers sharing the store."""

    name: str
    bus: Bus
    commands: DeviceCommands
    asking: Asking
    leases: LeaseMetrics
    timing: LeaseTiming
    executor: Executor
    stores: Stores
    keepers: list[LeaseKeeper] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _spawned: set[asyncio.Task[Any]] = field(default_factory=set)

    def keeper(self, lease: str, work: Work) -> LeaseKeeper:
        """``work`` run only while this controller holds ``lease``."""
        keeper = LeaseKeeper(
            self.stores.leases, lease, self.name, work, self.executor, self.leases, self.timing
        )
        self.keepers.append(keeper)
        return keeper

    def spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def publish(self, topic: str, payload: str) -> None:
        await Offload(self.executor)(self.bus.publish, topic, payload)

    async def start(self) -> None:
        """Listens, then starts relaying and keeping leases."""
        await self.bus.start()
        self._tasks.append(asyncio.create_task(self.commands.run(), name="relay"))
        for keeper in self.keepers:
            self._tasks.append(asyncio.create_task(keeper.run(), name=f"keep-{keeper.name}"))

    async def close(self) -> None:
        """Stops every leased work and gives the leases up (another controller takes
        them at once), then stops listening."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for keeper in self.keepers:
            await keeper.close()
        for task in list(self._spawned):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.asking.close()
        await self.bus.close()


def replica(
    stores: Stores,
    sessions: Sessions,
    executor: Executor,
    leases: LeaseMetrics,
    timing: LeaseTiming,
) -> Replica:
    """This controller's part, not started."""
    bus = bus_for(stores)
    commands = DeviceCommands(bus, deliver_here(sessions), executor)
    asking = Asking(bus, executor)
    part = Replica(replica_name(), bus, commands, asking, leases, timing, executor, stores)
    resend = OutboxResend(sessions, stores.lessons.pending_commands_of, Offload(executor))

    def resend_all(_: str = "") -> None:
        part.spawn(resend())

    bus.on_gap(resend_all)
    bus.subscribe(RESEND, resend_all)
    return part


def dispatch_once(part: Replica, dispatcher: Dispatcher) -> DispatchNudge:
    """The dispatcher, run by the controller holding its lease; what the others use to
    wake it."""

    async def work() -> None:
        # The previous holder may have stored launches it never relayed.
        await part.publish(RESEND, "")
        await dispatcher.run()

    keeper = part.keeper(DISPATCH, work)
    return DispatchNudge(dispatcher, lambda: keeper.lease is not None, part.bus, part.executor)


def gauges_once(part: Replica) -> Callable[[], bool]:
    """Whether the fleet-wide figures read from the store are this controller's to
    export: one controller exports them, so that a sum over controllers counts each
    device once."""
    keeper = part.keeper(GAUGES, _forever)
    return lambda: keeper.lease is not None


class ExportedOnce(Collector):
    """A collector of fleet-wide figures read from the store, exported only while
    ``exporting()`` (gauges_once): from one controller of those sharing the store."""

    def __init__(self, collector: Collector, exporting: Callable[[], bool]) -> None:
        self._collector = collector
        self._exporting = exporting

    def describe(self) -> Iterable[Metric]:
        describe = getattr(self._collector, "describe", None)
        return describe() if describe is not None else ()

    def collect(self) -> Iterable[Metric]:
        return self._collector.collect() if self._exporting() else ()


@dataclass(frozen=True, slots=True)
class OnceRegistry:
    """Registers store-derived collectors on ``registry`` as ExportedOnce."""

    registry: CollectorRegistry
    exporting: Callable[[], bool]

    def register(self, collector: Collector) -> None:
        self.registry.register(ExportedOnce(collector, self.exporting))
