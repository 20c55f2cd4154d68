"""The rollout engine: starts, pauses, resumes and aborts rollouts, and has the running
ones driven wave by wave (controller/rollouts/driving.py) by one controller, each
wave's slices run by every controller (``serve``: controller/rollouts/slices.py).

The controller holding the rollouts lease drives (alone on SQLite it takes the lease
at once): ``hold`` is the lease's work. It drives every running rollout the store has
(a wave its previous driver left unfinished is waited for and closed first), reads
the store again every few seconds and whenever another controller says so
(controller/rollouts/across.py), and stops driving when it loses the lease or stops:
the store keeps where each rollout was, for the next holder, and the slices being run
go on. An engine without a bus (a test's) drives what it starts, at once.

A start, pause or resume that reaches a controller not driving is recorded in the
store there, and the driver told to look. An abort there is asked of the driver,
which ends the rollout (every slice running stops within a renewal of its claim),
and the asker answers once the store has it ended. If no driver takes the abort
(none holds the lease while it changes hands, or the message was lost), the asker
ends the rollout in the store itself, and the slices running stop all the same at
their next renewal. Whoever asks, the store ends a rollout once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from controller.errors import StoreError
from controller.loops import LoopFailures, Retry
from controller.offload import Offload
from controller.rollouts.across import ASK, TOLD, Bus, Do, Message, encode, parse
from controller.rollouts.driving import CANCEL_WAIT, RolloutDriver
from controller.rollouts.engine_settings import EngineSettings
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.next_wave import DevicesById
from controller.rollouts.runner import RunnerSettings
from controller.rollouts.slice_runner import SliceRunner, WaveWorker
from controller.rollouts.slices import SliceStore
from controller.rollouts.store import NewHost, RolloutStore
from controller.rollouts.worker import RolloutWorker
from inventory.rollouts import RolloutRecord, RolloutSpec, RolloutState

# EngineSettings with the engine: the assembly (server.py) makes both.
__all__ = ["WATCH", "EngineSettings", "RolloutEngine"]

log = logging.getLogger(__name__)

_DAY = 86_400.0
# How often the driver reads the store for rollouts to drive, besides when told.
WATCH = 5.0
# How long an abort on another controller waits for the driver to take it, asking
# again every _ASK_AGAIN seconds.
_TAKEN_WAIT = 3.0
_ASK_AGAIN = 0.5
# How often that abort reads the store while the driver stops the wave (in case
# the driver's answer is lost).
_ENDED_POLL = 1.0


class _Answer:
    """The driver's answers to one abort asked of it."""

    def __init__(self, rollout_id: int) -> None:
        self.rollout_id = rollout_id
        self.taken = asyncio.Event()
        self.ended = asyncio.Event()


class RolloutEngine:
    """Starts, pauses, resumes and aborts rollouts; drives the running ones while this
    controller is the one that drives (alone, or while ``hold`` runs); runs slices of
    waves while ``serve`` runs."""

    # The lease under which one controller of those sharing a store drives rollouts.
    LEASE = "rollouts"

    def __init__(
        self,
        store: RolloutStore,
        slices: SliceStore,
        devices_by_id: DevicesById,
        executor: ThreadPoolExecutor,
        runner: RunnerSettings,
        settings: EngineSettings,
        metrics: RolloutMetrics,
        failures: LoopFailures | None,
        holder: str = "controller",
        now: Callable[[], float] = time.time,
        new_worker: Callable[[str], WaveWorker] = RolloutWorker,
        bus: Bus | None = None,
    ) -> None:
        self._store = store
        self._off = Offload(executor)
        self._settings = settings
        self._failures = failures
        self._now = now
        self._bus = bus
        self._driver = RolloutDriver(
            store,
            slices,
            devices_by_id,
            executor,
            runner.forks,
            settings,
            metrics,
            failures,
            now,
            self._cut_open,
            open_now=bus is None,
        )
        # Every controller runs slices of the waves, whichever drives them.
        self._slices = SliceRunner(
            slices,
            store,
            devices_by_id,
            holder,
            executor,
            runner,
            settings,
            metrics,
            failures,
            now,
            new_worker,
            self._slice_finished,
        )
        # Whether this controller drives rollouts: alone, always; else while ``hold``
        # runs, which the lease's keeper stops before another could take the lease.
        self._driving = bus is None
        self._look_now = asyncio.Event()
        # Aborts asked of this controller, by the asker's nonce: awaited here...
        self._asked: dict[str, _Answer] = {}
        # ...and being done here for another controller.
        self._taking: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        if bus is not None:
            bus.subscribe(ASK, self._on_ask)
            bus.subscribe(TOLD, self._on_told)

    async def start(self, spec: RolloutSpec, hosts: Sequence[NewHost], created_by: str) -> int:
        """Stores the rollout (raises HostsClaimed if a host is in another) and has it
        driven."""
        now = self._now()
        ids = [h.device_id for h in hosts]
        since = now - self._settings.gate_days * _DAY
        until = now - self._settings.lesson_on_time
        baseline = await self._off(self._store.lesson_rates, ids, since, until)
        rollout_id = await self._off(
            self._store.create_rollout, spec, list(hosts), created_by, now, baseline
        )
        log.info(
            "rollout %d started playbook=%s selector=%s hosts=%d by=%s",
            rollout_id,
            spec.playbook,
            spec.selector,
            len(hosts),
            created_by,
        )
        await self._have_driven(rollout_id)
        return rollout_id

    async def pause(self, rollout_id: int) -> RolloutRecord | None:
        """Pauses a running rollout: its running wave finishes, no other starts."""
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is not None and record.state is RolloutState.RUNNING:
            record = await self._set_state(rollout_id, RolloutState.PAUSED, "paused")
            await self._wake(rollout_id)
        return record

    async def resume(self, rollout_id: int) -> RolloutRecord | None:
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is not None and record.state is RolloutState.PAUSED:
            record = await self._set_state(rollout_id, RolloutState.RUNNING, "")
            await self._have_driven(rollout_id)
        return record

    async def abort(self, rollout_id: int, by: str) -> RolloutRecord | None:
        """Stops the running wave (if any) and ends the rollout; a finished one stays."""
        if self._driving:
            return await self._driver.abort(rollout_id, by)
        return await self._abort_there(rollout_id, by)

    def wake_all(self) -> None:
        """Something changed (a lesson import, a maintenance window): look again now."""
        if self._driving:
            self._driver.wake()
        else:
            self._spawn(self._tell(ASK, Message(Do.WAKE, 0)))

    async def hold(self) -> None:
        """The rollouts lease's work: drives every running rollout, reading the store
        for more every WATCH seconds and when told, until cancelled (the lease lost,
        the controller stopping); then stops driving, the store keeping where each
        rollout was."""
        self._driving = True
        self._driver.open()
        retry = Retry("rollout_engine", self._failures, what="watch")
        try:
            while True:
                await retry.one_pass(self._look, self._look_now, WATCH)
        finally:
            self._driving = False
            await self._driver.stop()

    async def serve(self) -> None:
        """Runs slices of waves until cancelled or ``close`` (every controller does,
        driving or not)."""
        await self._slices.run()

    async def close(self) -> None:
        """Stops driving and every task, the slices running here given up for another
        controller to run; the store keeps where each rollout was."""
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._driver.close()
        await self._slices.close()

    async def _cut_open(self, rollout_id: int) -> None:
        """A wave was cut: this controller's runner and every other's look now."""
        self._slices.wake()
        await self._tell(ASK, Message(Do.SLICES, rollout_id))

    async def _slice_finished(self, rollout_id: int) -> None:
        """A slice's results were stored here: the driver looks at the wave now."""
        if self._driving:
            self._driver.wake(rollout_id)
        else:
            await self._tell(ASK, Message(Do.WAKE, rollout_id))

    async def _look(self) -> None:
        """Drives each running rollout not driven here; stops the wave of one that the
        store has ended (by another controller's abort)."""
        # Only rollouts driven before the read: one started here meanwhile is not in it.
        before = self._driver.driving
        states = await self._off(self._store.unfinished_rollouts)
        for rollout_id in sorted(before - states.keys()):
            self._driver.ended_elsewhere(rollout_id)
        for rollout_id, state in sorted(states.items()):
            if rollout_id in self._driver.driving:
                if state is RolloutState.PAUSED:
                    self._driver.wake(rollout_id)
            elif state is RolloutState.RUNNING:
                self._driver.drive(rollout_id, resumed=True)

    async def _have_driven(self, rollout_id: int) -> None:
        if self._driving:
            self._driver.drive(rollout_id)
        else:
            await self._tell(ASK, Message(Do.LOOK, rollout_id))

    async def _wake(self, rollout_id: int) -> None:
        if self._driving:
            self._driver.wake(rollout_id)
        else:
            await self._tell(ASK, Message(Do.WAKE, rollout_id))

    async def _abort_there(self, rollout_id: int, by: str) -> RolloutRecord | None:
        """Abort, on a controller that does not drive: asked of the driver."""
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is None or record.state.final:
            return record
        nonce = secrets.token_hex(8)
        answer = self._asked[nonce] = _Answer(rollout_id)
        try:
            if await self._ask_abort(Message(Do.ABORT, rollout_id, by, nonce), answer.taken):
                await self._until_ended(rollout_id, answer.ended, CANCEL_WAIT + _TAKEN_WAIT)
        finally:
            del self._asked[nonce]
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is not None and not record.state.final:
            log.warning(
                "rollout %d: no controller driving rollouts ended it; aborted here", rollout_id
            )
            await self._driver.finish(rollout_id, RolloutState.ABORTED, f"aborted by {by}")
            # A driver that missed the abort stops the wave now rather than at its
            # next read of the store.
            await self._tell(ASK, Message(Do.LOOK, rollout_id))
            record = await self._off(self._store.get_rollout, rollout_id)
        return record

    async def _ask_abort(self, message: Message, taken: asyncio.Event) -> bool:
        """Asks the driver for the abort until it takes it, for at most _TAKEN_WAIT
        seconds; asked again every _ASK_AGAIN seconds, so that a controller taking the
        lease meanwhile (a holder died) hears it too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _TAKEN_WAIT
        while (left := deadline - loop.time()) > 0:
            await self._tell(ASK, message)
            if await _within(taken, min(_ASK_AGAIN, left)):
                return True
        return False

    async def _until_ended(self, rollout_id: int, ended: asyncio.Event, limit: float) -> None:
        """Until the driver says the rollout ended, the store has it ended, or ``limit``
        seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while (left := deadline - loop.time()) > 0:
            if await _within(ended, min(_ENDED_POLL, left)):
                return
            record = await self._off(self._store.get_rollout, rollout_id)
            if record is None or record.state.final:
                return

    async def _abort_for(self, message: Message) -> None:
        """An abort asked by another controller, taken by this one, the driver."""
        rollout_id, nonce = message.rollout_id, message.nonce
        log.info("rollout %d: abort by %s asked through another controller", rollout_id, message.by)
        # The asker asks again until it hears this: once is enough.
        self._taking.add(nonce)
        try:
            await self._tell(TOLD, Message(Do.TAKEN, rollout_id, nonce=nonce))
            await self._driver.abort(rollout_id, message.by)
            await self._tell(TOLD, Message(Do.ENDED, rollout_id, nonce=nonce))
        finally:
            self._taking.discard(nonce)

    def _on_ask(self, payload: str) -> None:
        message = parse(payload)
        if message is None:
            log.warning("a rollouts message not understood was ignored: %.100r", payload)
            return
        if message.do is Do.SLICES:
            self._slices.wake()
            return
        if not self._driving:
            return
        if message.do is Do.ABORT:
            if message.nonce not in self._taking:
                self._spawn(self._abort_for(message))
        elif message.do is Do.WAKE:
            self._driver.wake(message.rollout_id or None)
        elif message.do is Do.LOOK:
            self._look_now.set()

    def _on_told(self, payload: str) -> None:
        message = parse(payload)
        if message is None:
            log.warning("a rollouts message not understood was ignored: %.100r", payload)
            return
        answer = self._asked.get(message.nonce)
        if answer is None or answer.rollout_id != message.rollout_id:
            return
        if message.do in (Do.TAKEN, Do.ENDED):
            answer.taken.set()
        if message.do is Do.ENDED:
            answer.ended.set()

    async def _tell(self, topic: str, message: Message) -> bool:
        """Publishes ``message``; False if it could not be (the driver's read of the
        store every WATCH seconds finds the change anyway)."""
        if self._bus is None:
            return False
        try:
            await self._off(self._bus.publish, topic, encode(message))
        except StoreError as exc:
            log.warning(
                "rollout %d: %s not told to the other controllers: %s",
                message.rollout_id,
                message.do.value,
                exc,
            )
            return False
        return True

    async def _set_state(
        self, rollout_id: int, state: RolloutState, reason: str
    ) -> RolloutRecord | None:
        now = self._now()
        return await self._off(self._store.set_rollout_state, rollout_id, state, reason, now)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("rollouts: a request between controllers failed", exc_info=task.exception())


async def _within(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` is set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
