"""The rollout engine: drives each unfinished rollout wave by wave.

One asyncio task per running rollout. Each turn it reads the rollout from the store
(the store is the truth: a restart resumes from it), picks the next wave's hosts
(canary first, then doubling up to --wave-size, only hosts free of lessons and inside
their school's maintenance windows), runs the wave with ansible-runner in a worker
thread, stores every host's outcome and halts the rollout when its failed and
unreachable hosts pass the --max-fail budget (inventory/rollout_verdict.py: checked
before each wave and after it) or, with --gate lessons, when lessons on changed
devices fail more often than before. A rollout whose every host had its turn ends
done, or done-unreached when some hosts were not reached.

Pause lets the running wave finish; abort cancels it (ansible-runner's cancel
callback stops the ansible process) and its unfinished hosts are cancelled. On
shutdown a running wave is cancelled and left unfinished in the store: the next start
puts its hosts back in the queue, and the idempotent playbook runs on them again.

A turn that fails (the store, the worker) does not end the rollout's task: it is
logged, counted and tried again after a backoff (controller/loops.py), and the retry
starts from the store as a restart would, an unfinished wave's hosts back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo

from controller.loops import LoopFailures, Retry
from controller.offload import Offload
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.runner import RunnerSettings, WaveJob, WaveRun
from controller.rollouts.store import NewHost, RolloutQuery, RolloutStore
from controller.rollouts.worker import RolloutWorker, stop_masters_as
from inventory.ansible_inventory import runner_inventory
from inventory.model import DeviceRecord
from inventory.rollout_verdict import end_state, fail_budget, halt_after_wave, halt_before_wave
from inventory.rollouts import (
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    gate_closed,
    wave_size,
)
from inventory.school_day import Candidate, Window, parse_window, pick_wave

log = logging.getLogger(__name__)
T = TypeVar("T")

_DAY = 86_400.0
# Waves of different rollouts (on different hosts) may run side by side.
_WAVES_AT_ONCE = 4
# How long abort and shutdown wait for a cancelled wave's ansible process.
_CANCEL_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What the engine needs of the controller's settings."""

    playbooks_dir: Path
    # The controller's own folder of rollouts: each wave's worker log.
    work_dir: Path
    # Where Ansible writes each wave's files, as its OS user: outside the data folder.
    ansible_dir: Path
    zone: ZoneInfo
    batch_estimate: float
    recheck: float
    gate_days: float
    # Lessons that started less than this long ago may still launch: not judged yet.
    lesson_on_time: float


class WaveWorker(Protocol):
    """Runs a rollout's waves, one after another (controller/rollouts/worker.py)."""

    def run(self, job: WaveJob, cancel: threading.Event, log_path: Path) -> WaveRun:
        """Runs the wave (blocking) until it ends or ``cancel`` is set."""

    def close(self, grace: float = ...) -> None:
        """Stops the worker, its wave too if one runs."""


class RolloutEngine:
    """Starts, pauses, resumes and aborts rollouts, and drives the running ones."""

    def __init__(
        self,
        store: RolloutStore,
        devices_by_id: Callable[[Collection[str], float], list[DeviceRecord]],
        executor: ThreadPoolExecutor,
        runner: RunnerSettings,
        settings: EngineSettings,
        metrics: RolloutMetrics,
        failures: LoopFailures | None,
        now: Callable[[], float] = time.time,
        new_worker: Callable[[str], WaveWorker] = RolloutWorker,
    ) -> None:
        self._store = store
        # The registry's records of a wave's hosts (the fleet's store).
        self._devices_by_id = devices_by_id
        self._off = Offload(executor)
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
        # Each driven rollout's warm wave worker, kept from wave to wave.
        self._workers: dict[int, WaveWorker] = {}
        # Whether a wave ran with ssh masters (Ansible's linear strategy; Mitogen keeps
        # its own connections): only then has closing any to stop.
        self._masters = False
        self._closing = False

    async def resume_all(self) -> None:
        """At start-up: unfinished waves go back to the queue; running rollouts go on."""
        query = RolloutQuery(states=frozenset({RolloutState.RUNNING, RolloutState.PAUSED}))
        for record in await self._off(self._store.list_rollouts, query):
            requeued = await self._off(self._store.requeue_interrupted, record.rollout_id)
            log.info(
                "rollout %d resumed from the store state=%s requeued=%d",
                record.rollout_id,
                record.state.value,
                requeued,
            )
            if record.state is RolloutState.RUNNING:
                self._spawn(record.rollout_id)

    async def start(self, spec: RolloutSpec, hosts: Sequence[NewHost], created_by: str) -> int:
        """Stores the rollout (raises HostsClaimed if a host is in another) and runs it."""
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
        self._spawn(rollout_id)
        return rollout_id

    async def pause(self, rollout_id: int) -> RolloutRecord | None:
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is not None and record.state is RolloutState.RUNNING:
            record = await self._set_state(rollout_id, RolloutState.PAUSED, "paused")
        return record

    async def resume(self, rollout_id: int) -> RolloutRecord | None:
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is not None and record.state is RolloutState.PAUSED:
            record = await self._set_state(rollout_id, RolloutState.RUNNING, "")
            self._spawn(rollout_id)
        return record

    async def abort(self, rollout_id: int, by: str) -> RolloutRecord | None:
        """Stops the running wave (if any) and ends the rollout; a finished one stays."""
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is None or record.state.final:
            return record
        self._aborts[rollout_id] = by
        self._kick(rollout_id)
        task = self._tasks.get(rollout_id)
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), _CANCEL_WAIT)
        record = await self._off(self._store.get_rollout, rollout_id)
        if record is not None and not record.state.final:
            record = await self._finish(rollout_id, RolloutState.ABORTED, f"aborted by {by}")
        self._aborts.pop(rollout_id, None)
        return record

    def wake_all(self) -> None:
        """Something changed (a lesson import, a maintenance window): look again now."""
        for event in self._wake.values():
            event.set()

    async def close(self) -> None:
        """Cancels running waves and stops every task; the store keeps where they were."""
        self._closing = True
        for rollout_id in list(self._tasks):
            self._kick(rollout_id)
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=_CANCEL_WAIT)
        for task in tasks:
            task.cancel()
        # Workers of tasks that did not end in time: their waves are stopped too.
        for worker in list(self._workers.values()):
            await asyncio.get_running_loop().run_in_executor(None, worker.close, 0.0)
        self._workers.clear()
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

    def _spawn(self, rollout_id: int) -> None:
        if self._closing:
            return
        current = self._tasks.get(rollout_id)
        if current is not None and not current.done():
            self._wake[rollout_id].set()
            return
        self._wake[rollout_id] = asyncio.Event()
        task = asyncio.create_task(self._drive(rollout_id), name=f"rollout-{rollout_id}")
        self._tasks[rollout_id] = task
        task.add_done_callback(lambda t: self._forget(rollout_id, t))

    def _forget(self, rollout_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(rollout_id) is task:
            del self._tasks[rollout_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("rollout %d stopped by an error", rollout_id, exc_info=task.exception())

    async def _set_state(
        self, rollout_id: int, state: RolloutState, reason: str
    ) -> RolloutRecord | None:
        now = self._now()
        return await self._off(self._store.set_rollout_state, rollout_id, state, reason, now)

    async def _finish(
        self, rollout_id: int, state: RolloutState, reason: str
    ) -> RolloutRecord | None:
        record = await self._set_state(rollout_id, state, reason)
        self._metrics.finished(state)
        log.log(
            logging.INFO if state is RolloutState.DONE else logging.WARNING,
            "rollout %d %s: %s",
            rollout_id,
            state.value,
            reason,
        )
        return record

    async def _sleep(self, rollout_id: int, seconds: float | None) -> None:
        event = self._wake[rollout_id]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        event.clear()

    def _stopping(self, rollout_id: int) -> bool:
        return self._closing or rollout_id in self._aborts

    async def _drive(self, rollout_id: int) -> None:
        retry = Retry("rollout_engine", self._failures, what=f"rollout={rollout_id}")
        try:
            while not self._stopping(rollout_id):
                try:
                    if retry.in_a_row:
                        # As after a restart: a wave left unfinished goes back to the queue.
                        await self._off(self._store.requeue_interrupted, rollout_id)
                    record = await self._off(self._store.get_rollout, rollout_id)
                    if record is None or record.state.final:
                        return
                    if record.state is RolloutState.PAUSED:
                        return  # resume spawns the task again
                    going = await self._turn(record)
                    retry.succeeded()
                    if not going:
                        return
                except Exception as exc:
                    # Abort and shutdown cut the wait short (they set the wake event).
                    await self._sleep(rollout_id, retry.failed(exc))
        finally:
            if (worker := self._workers.pop(rollout_id, None)) is not None:
                await asyncio.get_running_loop().run_in_executor(self._waves, worker.close)

    async def _turn(self, record: RolloutRecord) -> bool:
        """One step of a running rollout: a wave, or a wait. False when it ended."""
        rid = record.rollout_id
        # Checked before every wave, and while hosts wait: lessons on changed devices
        # happen between waves.
        if record.spec.gate_lessons and record.waves and not await self._gate(record):
            return False
        pending = await self._off(self._store.rollout_hosts, rid, frozenset({HostOutcome.PENDING}))
        if not pending:
            state, reason = end_state(
                record.counts, len(record.spec.offline_skipped), len(record.waves)
            )
            await self._finish(rid, state, reason)
            return False
        size = wave_size(record.spec, record.total, len(record.waves))
        devices = await self._devices(pending)
        duration = self._expected(record, size)
        now = self._now()
        candidates = [
            Candidate(h.device_id, h.school_id, _room(devices.get(h.device_id))) for h in pending
        ]
        rooms = {(c.school_id, c.room_id) for c in candidates if c.room_id}
        busy = await self._off(self._store.busy_rooms, rooms, now, now + duration)
        windows = await self._windows({h.school_id for h in pending})
        pick = pick_wave(candidates, size, busy, windows, now, duration, self._settings.zone)
        if pick.waiting != record.waiting:
            await self._off(self._store.set_waiting, rid, pick.waiting, now)
        if not pick.chosen:
            retry = self._settings.recheck
            if pick.retry_at is not None:
                retry = min(retry, max(1.0, pick.retry_at - now))
            await self._sleep(rid, retry)
            return True
        by_id = {h.device_id: h for h in pending}
        return await self._wave(record, [by_id[d] for d in pick.chosen], devices)

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
            await self._finish(rid, RolloutState.HALTED, halt)
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
        if self._closing:
            # Left unfinished in the store: the next start requeues these hosts.
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
        if rid in self._aborts:
            return False
        after = await self._off(self._store.get_rollout, rid)
        halt = halt_after_wave(fail_budget(spec.max_fail, (after or record).counts), wave)
        if halt:
            await self._finish(rid, RolloutState.HALTED, halt)
            return False
        return True

    async def _gate(self, record: RolloutRecord) -> bool:
        """--gate lessons: halt if lessons on changed hosts fail more than before."""
        rid = record.rollout_id
        changed = await self._off(
            self._store.rollout_hosts, rid, frozenset({HostOutcome.OK, HostOutcome.CHANGED})
        )
        first = min((w.started_at for w in record.waves), default=self._now())
        until = self._now() - self._settings.lesson_on_time
        ids = [h.device_id for h in changed]
        after: LessonRates = await self._off(self._store.lesson_rates, ids, first, until)
        if not gate_closed(record.baseline, after):
            return True
        reason = (
            f"lesson gate: {after.failed} of {after.tried} lesson launches failed on changed "
            f"devices ({after.rate:.0%}), against {record.baseline.rate:.0%} before"
        )
        await self._finish(rid, RolloutState.HALTED, reason)
        return False

    def _expected(self, record: RolloutRecord, size: int) -> float:
        """How long a wave of ``size`` hosts should take: batches of ``forks`` hosts, each
        as long as the last wave's batches took (or the configured estimate)."""
        forks = max(1, self._runner.forks)
        per_batch = self._settings.batch_estimate
        done = [w for w in record.waves if w.finished_at is not None and w.hosts]
        if done:
            last = done[-1]
            assert last.finished_at is not None
            per_batch = (last.finished_at - last.started_at) / math.ceil(last.hosts / forks)
        return max(60.0, per_batch * math.ceil(size / forks))

    async def _devices(self, hosts: Iterable[HostResult]) -> dict[str, DeviceRecord]:
        """The registry's records of these hosts."""
        ids = [h.device_id for h in hosts]
        found = await self._off(self._devices_by_id, ids, self._now())
        return {d.identity.device_id: d for d in found}

    async def _windows(self, schools: set[str]) -> dict[str, list[Window]]:
        stored = await self._off(self._store.windows, schools)
        return {school: [parse_window(w) for w in texts] for school, texts in stored.items()}


def _fresh(logs: Path, name: str) -> str:
    """A wave's name, or wave-N.2, .3... when a wave interrupted by a restart runs again
    (the first attempt's files are kept for diagnosis): told by the worker logs in the
    controller's own folder, which the controller can always read."""
    attempt, fresh = 1, name
    while (logs / f"{fresh}.log").exists():
        attempt += 1
        fresh = f"{name}.{attempt}"
    return fresh


def _room(device: DeviceRecord | None) -> str:
    return device.identity.room_id if device is not None else ""
