"""Driving running rollouts, wave by wave, on the one controller that drives them.

One asyncio task per running rollout. Each turn it reads the rollout from the store
(the store is the truth: whoever drives next resumes from it), picks the next wave's
hosts (canary first, then doubling up to --wave-size, only hosts free of lessons and
inside their school's maintenance windows) and cuts the wave into slices in the
store, which every controller's slice runner claims and runs with ansible-runner
(controller/rollouts/slices.py). Once every slice has its hosts' outcomes stored it
closes the wave and halts the rollout when its failed and unreachable hosts pass the
--max-fail budget (inventory/rollout_verdict.py: checked before each wave and after
it, on the store's counts, whichever controller ran each slice) or, with --gate
lessons, when lessons on changed devices fail more often than before. A rollout
whose every host had its turn ends done, or done-unreached when some hosts were not
reached.

The driver drives only while open: from the start when the controller is alone, else
while it holds the rollouts lease (controller/rollouts/engine.py). Pause lets the
running wave finish; abort ends the rollout in the store, and each slice's runner
stops its ansible process at its next renewal and stores what it did. When the driver
stops driving (the lease lost, shutdown) the wave's slices run on: whoever drives the
rollout next finds the wave unfinished and waits for it as this one did.

A turn that fails (the store) does not end the rollout's task: it is logged, counted
and tried again after a backoff (controller/loops.py), from the store, as a new driver
would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from controller.loops import LoopFailures, Retry
from controller.offload import Offload
from controller.rollouts.engine_settings import EngineSettings
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.next_wave import DevicesById, NextWave
from controller.rollouts.slices import SliceStore, cut
from controller.rollouts.store import RolloutStore
from inventory.model import DeviceRecord
from inventory.rollout_verdict import fail_budget, halt_after_wave, halt_before_wave
from inventory.rollouts import HostResult, RolloutRecord, RolloutState, WaveRecord

log = logging.getLogger(__name__)

# How long an abort waits for the slices running to stop and store what they did.
CANCEL_WAIT = 30.0
# How often a driver waiting for a wave's slices reads the store, besides when a
# slice's runner says it finished one (a message lost costs this much).
SLICES_POLL = 2.0


class RolloutDriver:
    """Drives running rollouts wave by wave while open; aborts one driven here."""

    def __init__(
        self,
        store: RolloutStore,
        slices: SliceStore,
        devices_by_id: DevicesById,
        executor: ThreadPoolExecutor,
        forks: int,
        settings: EngineSettings,
        metrics: RolloutMetrics,
        failures: LoopFailures | None,
        now: Callable[[], float],
        cut_open: Callable[[int], Awaitable[None]],
        open_now: bool,
    ) -> None:
        self._store = store
        self._slices = slices
        self._off = Offload(executor)
        # The registry's records of a wave's hosts come from the fleet's store.
        self._next = NextWave(store, devices_by_id, self._off, settings, forks, now)
        self._settings = settings
        self._metrics = metrics
        self._failures = failures
        self._now = now
        # Tells every controller's slice runner that a wave was cut.
        self._cut_open = cut_open
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self._aborts: dict[int, str] = {}
        # Driven here, but ended by another controller (an abort it took on itself).
        self._ended: set[int] = set()
        self._open = open_now
        self._closed = False

    @property
    def driving(self) -> frozenset[int]:
        """The rollouts with a task here."""
        return frozenset(self._tasks)

    def open(self) -> None:
        """Drives from now on (the lease was taken)."""
        self._open = not self._closed

    def drive(self, rollout_id: int, resumed: bool = False) -> None:
        """Drives the rollout, from the store, if it is not driven here yet (else looks
        at it again now); nothing while closed. ``resumed``: found running in the
        store, as after a restart."""
        if not self._open:
            return
        current = self._tasks.get(rollout_id)
        if current is not None and not current.done():
            self._wake[rollout_id].set()
            return
        self._wake[rollout_id] = asyncio.Event()
        task = asyncio.create_task(self._drive(rollout_id, resumed), name=f"rollout-{rollout_id}")
        self._tasks[rollout_id] = task
        task.add_done_callback(lambda t: self._forget(rollout_id, t))

    def wake(self, rollout_id: int | None = None) -> None:
        """Something changed (a pause, a lesson import, a maintenance window): look at
        this rollout (None: every one) again now."""
        events = self._wake.values() if rollout_id is None else [self._wake.get(rollout_id)]
        for event in events:
            if event is not None:
                event.set()

    def ended_elsewhere(self, rollout_id: int) -> None:
        """The store has the rollout ended by another controller: its wave stops."""
        if rollout_id in self._tasks:
            self._ended.add(rollout_id)
            self._kick(rollout_id)

    async def abort(self, rollout_id: int, by: str) -> RolloutRecord | None:
        """Ends the rollout and waits (at most CANCEL_WAIT) for its running slices to
        stop and store what they did; a finished rollout stays."""
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is None or record.state.final:
            return record
        self._aborts[rollout_id] = by
        try:
            self._kick(rollout_id)
            await self.finish(rollout_id, RolloutState.ABORTED, f"aborted by {by}")
            await self._until_stopped(rollout_id)
        finally:
            self._aborts.pop(rollout_id, None)
        return await self._off(self._store.get_rollout, rollout_id)

    async def _until_stopped(self, rollout_id: int) -> None:
        """Until no live claim runs a slice of the rollout, for at most CANCEL_WAIT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT
        while await self._off(self._slices.running_slices, rollout_id):
            if loop.time() >= deadline:
                log.warning(
                    "rollout %d: slices still running %.0f s after its abort",
                    rollout_id,
                    CANCEL_WAIT,
                )
                return
            await asyncio.sleep(0.5)

    async def finish(self, rollout_id: int, state: RolloutState, reason: str) -> bool:
        """Ends the rollout in ``state``; counted and logged by the one controller whose
        call ended it. False if it had ended already."""
        ended = await self._off(self._store.end_rollout, rollout_id, state, reason, self._now())
        if ended:
            self._metrics.finished(state)
            log.log(
                logging.INFO if state is RolloutState.DONE else logging.WARNING,
                "rollout %d %s: %s",
                rollout_id,
                state.value,
                reason,
            )
        return ended

    async def stop(self) -> None:
        """Stops driving; returns once no task of it is left. The waves' slices run on
        (their runners are every controller's), for whoever drives next."""
        self._open = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        """Stops driving for good (shutdown); the store keeps where each rollout was."""
        self._closed = True
        await self.stop()

    def _kick(self, rollout_id: int) -> None:
        if rollout_id in self._wake:
            self._wake[rollout_id].set()

    def _forget(self, rollout_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(rollout_id) is task:
            del self._tasks[rollout_id]
            self._ended.discard(rollout_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("rollout %d stopped by an error", rollout_id, exc_info=task.exception())

    async def _sleep(self, rollout_id: int, seconds: float | None) -> None:
        event = self._wake[rollout_id]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()

    def _stopping(self, rollout_id: int) -> bool:
        return not self._open or rollout_id in self._aborts or rollout_id in self._ended

    async def _drive(self, rollout_id: int, resumed: bool) -> None:
        retry = Retry("rollout_engine", self._failures, what=f"rollout={rollout_id}")
        first = True
        while not self._stopping(rollout_id):
            try:
                record = await self._off(self._store.get_rollout, rollout_id)
                if record is None or record.state.final:
                    return
                if first and resumed and record.waves:
                    # Its waves began under another controller, or before a restart.
                    log.info("rollout %d resumed from the store", rollout_id)
                first = False
                going = await self._turn(record)
                retry.succeeded()
                if not going:
                    return
            except Exception as exc:
                # Abort and stopping cut the wait short (they set the wake event).
                await self._sleep(rollout_id, retry.failed(exc))

    async def _turn(self, record: RolloutRecord) -> bool:
        """One step of a running rollout: a wave's end, a wave, or a wait. False when
        it ended (or, paused, waits for its resume)."""
        rid = record.rollout_id
        if record.waves and record.waves[-1].finished_at is None:
            # A wave is running: this driver's, or one begun before it drove.
            return await self._close_wave(record, record.waves[-1])
        if record.state is RolloutState.PAUSED:
            return False  # resume drives it again
        # Checked before every wave, and while hosts wait: lessons on changed devices
        # happen between waves.
        if record.spec.gate_lessons and record.waves:
            halt = await self._next.gate(record)
            if halt:
                await self.finish(rid, RolloutState.HALTED, halt)
                return False
        step = await self._next.choose(record)
        if step.ended is not None:
            await self.finish(rid, step.ended, step.reason)
            return False
        if step.waiting is not None:
            await self._off(self._store.set_waiting, rid, step.waiting, self._now())
        if not step.hosts:
            await self._sleep(rid, step.wait)
            return True
        return await self._wave(record, step.hosts, step.devices)

    async def _wave(
        self,
        record: RolloutRecord,
        chosen: tuple[HostResult, ...],
        devices: dict[str, DeviceRecord],
    ) -> bool:
        """Cuts the wave into slices for the controllers to run; True once cut."""
        rid, spec = record.rollout_id, record.spec
        wave = len(record.waves) + 1
        ids = [h.device_id for h in chosen]
        unaddressed = sum(1 for d in ids if d not in devices or not devices[d].identity.address)
        halt = halt_before_wave(fail_budget(spec.max_fail, record.counts), wave, unaddressed)
        if halt:
            await self.finish(rid, RolloutState.HALTED, halt)
            return False
        if self._stopping(rid):
            return False
        size = self._settings.slice_hosts
        await self._off(self._store.start_wave, rid, wave, ids, self._now(), size)
        log.info(
            "rollout %d wave %d started hosts=%d slices=%d",
            rid,
            wave,
            len(ids),
            len(cut(ids, size)),
        )
        await self._cut_open(rid)
        return True

    async def _close_wave(self, record: RolloutRecord, wave: WaveRecord) -> bool:
        """Waits until every slice of the wave is finished, then closes it and judges
        it: False if the rollout halted (or this driver stops)."""
        rid = record.rollout_id
        while await self._off(self._slices.unfinished_slices, rid, wave.wave):
            if self._stopping(rid):
                return False
            await self._sleep(rid, SLICES_POLL)
            if self._stopping(rid):
                return False
        finished = self._now()
        await self._off(self._store.finish_wave, rid, wave.wave, [], finished)
        hosts = await self._off(self._store.rollout_hosts, rid)
        outcomes = [h.outcome for h in hosts if h.wave == wave.wave]
        self._metrics.wave_done(finished - wave.started_at, outcomes)
        log.info(
            "rollout %d wave %d finished hosts=%d failed=%d seconds=%.1f",
            rid,
            wave.wave,
            len(outcomes),
            sum(o.bad for o in outcomes),
            finished - wave.started_at,
        )
        counts = (await self._off(self._store.get_rollout, rid) or record).counts
        halt = halt_after_wave(fail_budget(record.spec.max_fail, counts), wave.wave)
        if halt:
            await self.finish(rid, RolloutState.HALTED, halt)
            return False
        return True
