"""Driving running rollouts, wave by wave, on the one controller that drives them.

One asyncio task per running rollout. Each turn it reads the rollout from the store
(the store is the truth: whoever drives next resumes from it), picks the next wave's
hosts (canary first, then doubling up to --wave-size, only hosts free of lessons and
inside their school's maintenance windows), runs the wave with ansible-runner in a
worker process, stores every host's outcome and halts the rollout when its failed and
unreachable hosts pass the --max-fail budget (inventory/rollout_verdict.py: checked
before each wave and after it) or, with --gate lessons, when lessons on changed
devices fail more often than before. A rollout whose every host had its turn ends
done, or done-unreached when some hosts were not reached.

The driver drives only while open: from the start when the controller is alone, else
while it holds the rollouts lease (controller/rollouts/engine.py). Pause lets the
running wave finish; abort cancels it (ansible-runner's cancel callback stops the
ansible process) and its unfinished hosts are cancelled. When it stops driving (the
lease lost, shutdown) a running wave is cancelled and left unfinished in the store:
the first turn of whoever drives the rollout next puts that wave's hosts back in the
queue, and the idempotent playbook runs on them again.

A turn that fails (the store, the worker) does not end the rollout's task: it is
logged, counted and tried again after a backoff (controller/loops.py), and the retry
starts from the store as a new driver would, an unfinished wave's hosts back in the
queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from controller.loops import LoopFailures, Retry
from controller.offload import Offload
from controller.rollouts.engine_settings import EngineSettings
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.next_wave import DevicesById, NextWave
from controller.rollouts.runner import RunnerSettings, WaveJob, WaveRun
from controller.rollouts.store import RolloutStore
from controller.rollouts.worker import stop_masters_as
from inventory.ansible_inventory import runner_inventory
from inventory.model import DeviceRecord
from inventory.rollout_verdict import fail_budget, halt_after_wave, halt_before_wave
from inventory.rollouts import HostOutcome, HostResult, RolloutRecord, RolloutState

log = logging.getLogger(__name__)

# Waves of different rollouts (on different hosts) may run side by side.
_WAVES_AT_ONCE = 4
# How long abort and stopping wait for a cancelled wave's ansible process.
CANCEL_WAIT = 30.0


class WaveWorker(Protocol):
    """Runs a rollout's waves, one after another (controller/rollouts/worker.py)."""

    def run(self, job: WaveJob, cancel: threading.Event, log_path: Path) -> WaveRun:
        """Runs the wave (blocking) until it ends or ``cancel`` is set."""

    def close(self, grace: float = ...) -> None:
        """Stops the worker, its wave too if one runs."""


class RolloutDriver:
    """Drives running rollouts wave by wave while open; aborts one driven here."""

    def __init__(
        self,
        store: RolloutStore,
        devices_by_id: DevicesById,
        executor: ThreadPoolExecutor,
        runner: RunnerSettings,
        settings: EngineSettings,
        metrics: RolloutMetrics,
        failures: LoopFailures | None,
        now: Callable[[], float],
        new_worker: Callable[[str], WaveWorker],
        open_now: bool,
    ) -> None:
        self._store = store
        self._off = Offload(executor)
        # The registry's records of a wave's hosts come from the fleet's store.
        self._next = NextWave(store, devices_by_id, self._off, settings, runner.forks, now)
        self._runner = runner
        self._settings = settings
        self._metrics = metrics
        self._failures = failures
        self._now = now
        self._new_worker = new_worker
        self._waves = ThreadPoolExecutor(_WAVES_AT_ONCE, thread_name_prefix="rollout-wave")
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self._cancel: dict[int, threading.Event] = {}
        self._aborts: dict[int, str] = {}
        # Driven here, but ended by another controller (an abort it took on itself).
        self._ended: set[int] = set()
        # Each driven rollout's warm wave worker, kept from wave to wave.
        self._workers: dict[int, WaveWorker] = {}
        # Whether a wave ran with ssh masters (Ansible's linear strategy; Mitogen keeps
        # its own connections): only then has closing any to stop.
        self._masters = False
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
        """Stops the running wave (if any) and ends the rollout; a finished one stays."""
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is None or record.state.final:
            return record
        self._aborts[rollout_id] = by
        try:
            self._kick(rollout_id)
            task = self._tasks.get(rollout_id)
            if task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), CANCEL_WAIT)
            await self.finish(rollout_id, RolloutState.ABORTED, f"aborted by {by}")
        finally:
            self._aborts.pop(rollout_id, None)
        return await self._off(self._store.get_rollout, rollout_id)

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
        """Stops driving: running waves are cancelled and left unfinished in the store
        for whoever drives next; returns once no task of it is left."""
        self._open = False
        for rollout_id in list(self._tasks):
            self._kick(rollout_id)
        tasks = list(self._tasks.values())
        late: set[asyncio.Task[None]] = set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CANCEL_WAIT)
        # Workers of tasks that did not end in time: ending them stops their waves.
        loop = asyncio.get_running_loop()
        for worker in list(self._workers.values()):
            await loop.run_in_executor(None, worker.close, 0.0)
        self._workers.clear()
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def close(self) -> None:
        """Stops driving for good (shutdown); the store keeps where each rollout was."""
        self._closed = True
        await self.stop()
        self._waves.shutdown(wait=False, cancel_futures=True)
        if self._masters:
            control_dir = self._runner.control_path_dir
            await asyncio.get_running_loop().run_in_executor(
                None, stop_masters_as, self._runner.os_user, control_dir
            )

    def _kick(self, rollout_id: int) -> None:
        if rollout_id in self._cancel:
            self._cancel[rollout_id].set()
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

    async def _requeue(self, rollout_id: int) -> int:
        """The hosts of the rollout's unfinished wave back in the queue: no task here
        drives it, and only one controller drives rollouts, so that wave was cut short
        (its controller stopped, died or lost the lease, or its results were refused)."""
        requeued = await self._off(self._store.requeue_interrupted, rollout_id)
        if requeued:
            log.warning(
                "rollout %d: %d hosts of an interrupted wave are back in the queue; the "
                "playbook runs on them again",
                rollout_id,
                requeued,
            )
        return requeued

    async def _drive(self, rollout_id: int, resumed: bool) -> None:
        retry = Retry("rollout_engine", self._failures, what=f"rollout={rollout_id}")
        first = True
        try:
            while not self._stopping(rollout_id):
                try:
                    requeued = 0
                    if first or retry.in_a_row:
                        requeued = await self._requeue(rollout_id)
                    record = await self._off(self._store.get_rollout, rollout_id)
                    if record is None or record.state.final:
                        return
                    if first and resumed and (record.waves or requeued):
                        # Its waves began under another controller, or before a restart.
                        log.info(
                            "rollout %d resumed from the store requeued=%d", rollout_id, requeued
                        )
                    first = False
                    if record.state is RolloutState.PAUSED:
                        return  # resume drives it again
                    going = await self._turn(record)
                    retry.succeeded()
                    if not going:
                        return
                except Exception as exc:
                    # Abort and stopping cut the wait short (they set the wake event).
                    await self._sleep(rollout_id, retry.failed(exc))
        finally:
            if (worker := self._workers.pop(rollout_id, None)) is not None:
                await asyncio.get_running_loop().run_in_executor(self._waves, worker.close)

    async def _turn(self, record: RolloutRecord) -> bool:
        """One step of a running rollout: a wave, or a wait. False when it ended."""
        rid = record.rollout_id
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
        chosen: Sequence[HostResult],
        devices: dict[str, DeviceRecord],
    ) -> bool:
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
        started = self._now()
        await self._off(self._store.start_wave, rid, wave, ids, started)
        reachable = [devices[d] for d in ids if d in devices and devices[d].identity.address]
        # A host the registry has no address for cannot be reached; Ansible never sees it.
        results = {
            h.device_id: replace(
                h,
                wave=wave,
                outcome=HostOutcome.UNREACHABLE,
                message="no address known: the device has not connected",
            )
            for h in chosen
        }
        log.info(
            "rollout %d wave %d started hosts=%d strategy=%s",
            rid,
            wave,
            len(chosen),
            spec.strategy or self._runner.strategy,
        )
        if reachable:
            strategy = spec.strategy or self._runner.strategy
            self._masters = self._masters or strategy == "linear"
            cancel = self._cancel[rid] = threading.Event()
            if self._stopping(rid):
                # Stopped while the wave was being stored: it stops at once.
                cancel.set()
            name = _fresh(self._settings.work_dir / str(rid), f"wave-{wave}")
            job = WaveJob(
                playbook=self._settings.playbooks_dir / spec.playbook,
                inventory=runner_inventory(reachable),
                hosts=tuple(d.identity.device_id for d in reachable),
                extra_vars=dict(spec.extra_vars),
                work_dir=self._settings.ansible_dir / str(rid) / name,
                settings=replace(self._runner, strategy=strategy),
                wave=wave,
                schools={h.device_id: h.school_id for h in chosen},
            )
            loop = asyncio.get_running_loop()
            try:
                log_path = self._settings.work_dir / str(rid) / f"{name}.log"
                worker = self._workers.get(rid) or self._workers.setdefault(
                    rid, self._new_worker(self._runner.os_user)
                )
                run: WaveRun = await loop.run_in_executor(
                    self._waves, worker.run, job, cancel, log_path
                )
            finally:
                self._cancel.pop(rid, None)
            for device_id, result in run.results.items():
                school = results[device_id].school_id
                results[device_id] = replace(result, wave=wave, school_id=school)
        if not self._open:
            # Left unfinished in the store: whoever drives next requeues these hosts.
            return False
        final = list(results.values())
        finished = self._now()
        await self._off(self._store.finish_wave, rid, wave, final, finished)
        self._metrics.wave_done(finished - started, [r.outcome for r in final])
        log.info(
            "rollout %d wave %d finished hosts=%d failed=%d seconds=%.1f",
            rid,
            wave,
            len(final),
            sum(r.outcome.bad for r in final),
            finished - started,
        )
        if self._stopping(rid):
            return False
        after = await self._off(self._store.get_rollout, rid)
        halt = halt_after_wave(fail_budget(spec.max_fail, (after or record).counts), wave)
        if halt:
            await self.finish(rid, RolloutState.HALTED, halt)
            return False
        return True


def _fresh(logs: Path, name: str) -> str:
    """A wave's name, or wave-N.2, .3... when a wave interrupted by a restart runs again
    (the first attempt's files are kept for diagnosis): told by the worker logs in the
    controller's own folder, which the controller can always read."""
    attempt, fresh = 1, name
    while (logs / f"{fresh}.log").exists():
        attempt += 1
        fresh = f"{name}.{attempt}"
    return fresh
