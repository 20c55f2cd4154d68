"""Runs the slices of rollout waves that this controller claims; every controller
sharing the store runs one (controller/rollouts/slices.py says how slices work).

While it has a free slot it claims the next unfinished slice: its first slice always,
more (up to ``slots``) only while the machine has a core to spare. Each slice runs in
a warm wave worker (controller/rollouts/worker.py), one per slot, kept from slice to
slice. While a slice runs its claim is renewed every ``claim_renew`` seconds; the run
is stopped when the claim is lost (its results would be refused) or the rollout has
ended (its results are stored: what the playbook did is what it did), and, trusting
this controller's clock only to stop early, when no renewal has succeeded for the
claim's length less a margin. It looks for slices when told (a wave was cut, here or
on another controller), when a slot frees, and every few seconds, which also finds
the slices of a controller that died once their claims expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from controller.loops import LoopFailures, Retry
from controller.offload import Offload
from controller.rollouts.engine_settings import EngineSettings
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.next_wave import DevicesById
from controller.rollouts.runner import RunnerSettings, WaveJob, WaveRun
from controller.rollouts.slices import Renewal, SliceClaim, SliceStore, may_claim
from controller.rollouts.store import RolloutStore
from controller.rollouts.worker import stop_masters_as
from inventory.ansible_inventory import runner_inventory
from inventory.rollouts import HostOutcome, HostResult

log = logging.getLogger(__name__)

# How often the runner looks for slices when not told: a dead controller's slice is
# run again within its claim's length plus this.
LOOK_EVERY = 3.0
# How long stopping waits for a slice's cancelled ansible process.
CANCEL_WAIT = 30.0


class _Kept(enum.Enum):
    """What became of a slice's claim while it ran."""

    KEPT = "kept"
    LOST = "lost"
    # Released as this controller stopped.
    GIVEN_UP = "given up"


class WaveWorker(Protocol):
    """Runs waves' slices, one after another (controller/rollouts/worker.py)."""

    def run(self, job: WaveJob, cancel: threading.Event, log_path: Path) -> WaveRun:
        """Runs the job (blocking) until it ends or ``cancel`` is set."""

    def close(self, grace: float = ...) -> None:
        """Stops the worker, its job too if one runs."""


class Load(Protocol):
    def __call__(self) -> tuple[float, int]:
        """The 1-minute load average and the cores."""


def machine_load() -> tuple[float, int]:
    """This machine's 1-minute load average and its cores."""
    return os.getloadavg()[0], os.cpu_count() or 1


class SliceRunner:
    """Claims and runs slices of rollout waves on this controller."""

    def __init__(
        self,
        slices: SliceStore,
        rollouts: RolloutStore,
        devices_by_id: DevicesById,
        holder: str,
        executor: ThreadPoolExecutor,
        runner: RunnerSettings,
        settings: EngineSettings,
        metrics: RolloutMetrics,
        failures: LoopFailures | None,
        now: Callable[[], float],
        new_worker: Callable[[str], WaveWorker],
        finished: Callable[[int], Awaitable[None]],
        load: Load = machine_load,
    ) -> None:
        self._slices = slices
        self._rollouts = rollouts
        self._devices_by_id = devices_by_id
        self._holder = holder
        self._off = Offload(executor)
        self._runner = runner
        self._settings = settings
        self._metrics = metrics
        self._failures = failures
        self._now = now
        self._new_worker = new_worker
        # Told once a slice's results are stored: the rollout's driver closes the wave
        # when every slice is.
        self._finished = finished
        self._load = load
        self._jobs = ThreadPoolExecutor(max(1, settings.slots), thread_name_prefix="rollout-slice")
        self._idle: list[WaveWorker] = []
        self._running: dict[asyncio.Task[None], threading.Event] = {}
        self._look = asyncio.Event()
        # Whether a slice ran with ssh masters (Ansible's linear strategy; Mitogen keeps
        # its own connections): only then has closing any to stop.
        self._masters = False
        # Set once the runner stops: runs stopped then give their claims up.
        self._stopping = False

    def wake(self) -> None:
        """Slices may be there to claim: look now."""
        self._look.set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(self) -> None:
        """Claims slices while there is room, until cancelled or closed (then stops its
        runs, giving their claims up for another controller to take at once)."""
        retry = Retry("rollout_slices", self._failures, what="claim")
        try:
            while not self._stopping:
                await retry.one_pass(self._claim_while_room, self._look, LOOK_EVERY)
        finally:
            await self._stop_runs()

    async def close(self) -> None:
        """Stops the runs, then the workers and the ssh masters."""
        await self._stop_runs()
        self._look.set()
        loop = asyncio.get_running_loop()
        for worker in self._idle:
            await loop.run_in_executor(None, worker.close, 0.0)
        self._idle.clear()
        self._jobs.shutdown(wait=False, cancel_futures=True)
        if self._masters:
            control_dir = self._runner.control_path_dir
            await loop.run_in_executor(None, stop_masters_as, self._runner.os_user, control_dir)

    async def _claim_while_room(self) -> None:
        while not self._stopping:
            load, cores = self._load()
            if not may_claim(self.running, self._settings.slots, load, cores):
                return
            ttl = self._settings.claim_ttl
            claim = await self._off(self._slices.claim_slice, self._holder, ttl)
            if claim is None:
                return
            cancel = threading.Event()
            task = asyncio.create_task(
                self._run_slice(claim, cancel), name=f"slice-{claim.rollout_id}-{claim.wave}"
            )
            self._running[task] = cancel
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            # Its claim expires unrenewed and the slice runs again (here or elsewhere).
            if self._failures is not None:
                self._failures.count("rollout_slices")
            log.error(
                "a rollout slice stopped by an error; it runs again once its claim expires",
                exc_info=task.exception(),
            )
        # A slot is free.
        self._look.set()

    async def _stop_runs(self) -> None:
        self._stopping = True
        for cancel in self._running.values():
            cancel.set()
        tasks = list(self._running)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CANCEL_WAIT)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    async def _run_slice(self, claim: SliceClaim, cancel: threading.Event) -> None:
        rid, wave, n = claim.rollout_id, claim.wave, claim.slice
        what = f"rollout {rid} wave {wave} slice {n}"
        if claim.epoch > 1:
            log.warning(
                "%s: its previous claim ended before the slice did (a controller stopped or "
                "died); the playbook runs on its %d hosts again here",
                what,
                len(claim.hosts),
            )
        record = await self._off(self._rollouts.get_rollout, rid)
        if record is None or record.state.final:
            # Ended as it was claimed: nothing runs, and its hosts stay as the end
            # left them.
            await self._off(self._slices.finish_slice, claim, [], self._now())
            return
        ids = [device_id for device_id, _ in claim.hosts]
        found = await self._off(self._devices_by_id, ids, self._now())
        devices = {d.identity.device_id: d for d in found}
        reachable = [devices[d] for d in ids if d in devices and devices[d].identity.address]
        # A host the registry has no address for cannot be reached; Ansible never sees it.
        results = {
            device_id: HostResult(
                device_id,
                school_id,
                wave=wave,
                outcome=HostOutcome.UNREACHABLE,
                message="no address known: the device has not connected",
            )
            for device_id, school_id in claim.hosts
        }
        strategy = record.spec.strategy or self._runner.strategy
        log.info("%s started hosts=%d strategy=%s by=%s", what, len(ids), strategy, self._holder)
        kept = _Kept.KEPT
        if reachable:
            self._masters = self._masters or strategy == "linear"
            name = _fresh(self._settings.work_dir / str(rid), f"wave-{wave}-slice-{n}")
            job = WaveJob(
                playbook=self._settings.playbooks_dir / record.spec.playbook,
                inventory=runner_inventory(reachable),
                hosts=tuple(d.identity.device_id for d in reachable),
                extra_vars=dict(record.spec.extra_vars),
                work_dir=self._settings.ansible_dir / str(rid) / name,
                settings=replace(self._runner, strategy=strategy),
                wave=wave,
                schools=dict(claim.hosts),
            )
            log_path = self._settings.work_dir / str(rid) / f"{name}.log"
            run, kept = await self._run_kept(claim, job, cancel, log_path)
            for device_id, result in run.results.items():
                if device_id in results:
                    school = results[device_id].school_id
                    results[device_id] = replace(result, wave=wave, school_id=school)
        if kept is not _Kept.KEPT:
            self._metrics.slice_done("lost")
            if kept is _Kept.GIVEN_UP:
                log.info("%s: given up as this controller stops; another runs it", what)
            else:
                log.warning("%s: its claim was lost; the next claimer's results count", what)
            return
        final = list(results.values())
        stored = await self._off(self._slices.finish_slice, claim, final, self._now())
        self._metrics.slice_done("stored" if stored else "refused")
        if not stored:
            log.warning("%s: another controller claimed it meanwhile; results refused", what)
            return
        log.info(
            "%s finished hosts=%d failed=%d",
            what,
            len(results),
            sum(r.outcome.bad for r in results.values()),
        )
        await self._finished(rid)

    async def _run_kept(
        self, claim: SliceClaim, job: WaveJob, cancel: threading.Event, log_path: Path
    ) -> tuple[WaveRun, _Kept]:
        """Runs the job in a worker while renewing the claim; the run and whether the
        claim was kept throughout, lost, or given up as this controller stops."""
        loop = asyncio.get_running_loop()
        worker = self._idle.pop() if self._idle else self._new_worker(self._runner.os_user)
        running = loop.run_in_executor(self._jobs, worker.run, job, cancel, log_path)
        kept = _Kept.KEPT
        ttl, renew = self._settings.claim_ttl, self._settings.claim_renew
        # The claim counts as held until the last successful renewal's start plus its
        # length less a margin: this controller's clock only ever stops a run early.
        held_until = loop.time() + ttl - renew
        try:
            while not running.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(running), renew)
                if running.done() or cancel.is_set():
                    continue
                asked = loop.time()
                try:
                    renewal = await self._off(self._slices.renew_slice, claim, ttl)
                except Exception as exc:
                    log.warning(
                        "rollout %d: a slice's claim not renewed: %s", claim.rollout_id, exc
                    )
                    renewal = Renewal.HELD if loop.time() < held_until else Renewal.LOST
                else:
                    if renewal is Renewal.HELD:
                        held_until = asked + ttl - renew
                if renewal is not Renewal.HELD:
                    kept = _Kept.KEPT if renewal is Renewal.ENDED else _Kept.LOST
                    cancel.set()
            run: WaveRun = await running
        except BaseException:
            cancel.set()
            await loop.run_in_executor(None, worker.close, 0.0)
            raise
        if self._stopping:
            await loop.run_in_executor(None, worker.close, 0.0)
        else:
            self._idle.append(worker)
        if kept is _Kept.KEPT and cancel.is_set() and self._stopping:
            # Stopped by this controller's stopping: the slice is not finished. Given
            # up at once, so that another controller runs it without waiting.
            await self._off(self._slices.release_slice, claim)
            kept = _Kept.GIVEN_UP
        return run, kept


def _fresh(logs: Path, name: str) -> str:
    """A slice's name, or wave-N-slice-M.2, .3... when a slice runs again here (the
    first attempt's files are kept for diagnosis): told by the worker logs in the
    controller's own folder, which the controller can always read."""
    attempt, fresh = 1, name
    while (logs / f"{fresh}.log").exists():
        attempt += 1
        fresh = f"{name}.{attempt}"
    return fresh
