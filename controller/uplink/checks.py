"""Schools' uplink checks: one check from start to result, and the schedule.

A check picks one of the school's online devices able to measure (its stream is on
this controller and its agent has the "uplink" capability), records the check as
running (the store refuses a second running check of one school), issues a one-use
token in the store (any controller's uplink endpoint takes it), sends the device a
MeasureUplink command, and waits for its answer: the transfer's timeout and a grace
for the answer's way back. The answer is judged (controller/uplink/plan.py) and
stored; no answer is a failure.

The schedule is a reconcile loop over the store: when a school's slot in the interval
comes round and it has an online device, a check starts, at most ``concurrency`` at
a time on this controller. Several controllers sharing the store each run the
schedule, and each measures only schools where it holds a device able to measure:
each claims the school's slot in the store (``start_uplink_check`` with ``since``),
which lets one of them measure it once per slot; the others let it be, quietly. The
one holding the school's best kind of device claims first (plan.claim_delay). Checks left
running by a controller that stopped are failed by a periodic sweep, and old ones
pruned. A failed look at the store is retried with backoff (controller/loops.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from controller.errors import StoreError, UplinkElsewhere, UplinkUnavailable
from controller.fleet.store import DeviceQuery, DeviceStore
from controller.loops import LoopFailures, Retry
from controller.offload import Offload
from controller.uplink.endpoint import PATH_PREFIX
from controller.uplink.metrics import UplinkMetrics
from controller.uplink.plan import (
    Measurement,
    claim_delay,
    due_schools,
    judge,
    last_slot,
    next_due,
    pick_device,
)
from controller.uplink.store import UplinkStore
from controller.uplink.tokens import Tokens
from inventory.model import DeviceStatus
from inventory.uplink import UplinkCheck

log = logging.getLogger(__name__)
T = TypeVar("T")

# Longest sleep of the schedule between looks at the store.
_IDLE_MAX = 30.0
_IDLE_MIN = 0.05
# Checks left running are swept this often, once they are this far past their deadline.
_SWEEP_EVERY = 60.0
_SWEEP_MARGIN = 60.0
# Checks are kept this long (the history is Prometheus's; this is for `uplink list`).
_KEEP = 90 * 86_400.0
# Online devices of one school considered for a check.
_CANDIDATES_MAX = 1000


@dataclass(frozen=True, slots=True)
class MeasureOrder:
    """What a device is told: fetch ``bytes`` from the controller's ``port`` and ``path``."""

    command_id: str
    port: int
    path: str
    bytes: int
    timeout: float


@dataclass(frozen=True, slots=True)
class UplinkAnswer:
    """A device's answer to a MeasureOrder, as it said it."""

    device_id: str
    command_id: str
    ok: bool
    message: str
    received: int
    seconds: float


class Courier(Protocol):
    """Gets orders to devices (controller/api/uplink_orders.py: their streams)."""

    def holds(self, device_id: str) -> bool:
        """Whether the device's stream is on this controller."""

    def can_measure(self, device_id: str) -> bool:
        """Whether the device's stream is here and its agent measures uplinks."""

    def send(self, device_id: str, order: MeasureOrder) -> bool:
        """Sends the order; False if the device's stream is not here any more."""


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """How checks run; ``interval`` 0: only by hand."""

    interval: float
    # Checks at once on this controller.
    concurrency: int
    bytes: int
    timeout: float
    # The uplink endpoint's port, told to devices.
    port: int
    # Seconds an answer may take on its way back after the transfer's own timeout.
    answer_grace: float = 15.0
    # Seconds a controller waits past a school's slot for each better kind of device
    # another controller holds, before it claims the slot (plan.claim_delay).
    prefer_wait: float = 2.0


@dataclass(frozen=True, slots=True)
class _Pending:
    check: UplinkCheck
    answer: asyncio.Future[UplinkAnswer]


class UplinkChecks:
    """Runs checks, by hand (``check``) and on the schedule (``run``)."""

    def __init__(
        self,
        store: UplinkStore,
        devices: DeviceStore,
        executor: ThreadPoolExecutor,
        courier: Courier,
        tokens: Tokens,
        metrics: UplinkMetrics,
        settings: UplinkSettings,
        failures: LoopFailures | None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._failures = failures
        self._store = store
        # Which schools have devices online, and which devices (the fleet's store).
        self._devices = devices
        self._off_loop = Offload(executor)
        self._courier = courier
        self._tokens = tokens
        self._metrics = metrics
        self._s = settings
        self._now = now
        # The check running on this controller for each school.
        self._running: dict[str, asyncio.Task[UplinkCheck]] = {}
        # Checks waiting for their device's answer, by command id.
        self._waiting: dict[str, _Pending] = {}
        # Schools due that could not start (no device able here, or another controller
        # claimed the slot): not again before their next slot.
        self._skipped: dict[str, float] = {}
        # Schools due beyond the concurrency limit, started (as scheduled) as checks end.
        self._queue: list[str] = []
        self._swept = float("-inf")

    @property
    def deadline(self) -> float:
        """Seconds from a check's start until it is failed for want of an answer."""
        return self._s.timeout + self._s.answer_grace

    async def check(self, school_id: str) -> UplinkCheck:
        """Checks the school's uplink now, or joins its check running here; the ended check.

        Raises UplinkUnavailable if no device can measure, StoreError from the store."""
        task = self._running.get(school_id) or self._start(school_id, scheduled=False)
        return await asyncio.shield(task)

    async def able_here(self, school_id: str) -> bool:
        """Whether one of the school's online devices that can measure is connected to
        this controller."""
        try:
            await self._pick(school_id, self._now())
        except UplinkUnavailable:
            return False
        return True

    def answered(self, answer: UplinkAnswer) -> None:
        """A device's answer arrived (a replayed or late one is ignored)."""
        pending = self._waiting.get(answer.command_id)
        if pending is None or pending.check.device_id != answer.device_id:
            log.debug("uplink answer ignored device=%s cmd=%s", answer.device_id, answer.command_id)
            return
        if not pending.answer.done():
            pending.answer.set_result(answer)

    def _start(self, school_id: str, *, scheduled: bool) -> asyncio.Task[UplinkCheck]:
        task = asyncio.create_task(self._run(school_id, scheduled), name=f"uplink {school_id}")
        self._running[school_id] = task
        task.add_done_callback(lambda t: self._ended(school_id, t, scheduled))
        return task

    def _ended(self, school_id: str, task: asyncio.Task[UplinkCheck], scheduled: bool) -> None:
        if self._running.get(school_id) is task:
            del self._running[school_id]
        if not task.cancelled():
            exc = task.exception()
            if isinstance(exc, UplinkUnavailable):
                self._skipped[school_id] = self._now()
                # On the schedule this is the usual case with several controllers: the
                # school's devices are on another, or another claimed the slot first.
                # A school no controller can measure is the SchoolUplinkNeverMeasured
                # alert's, not a line per controller and slot.
                level = logging.DEBUG if scheduled else logging.INFO
                log.log(level, "uplink check not started school=%s: %s", school_id, exc)
            elif exc is not None:
                log.error("uplink check broke school=%s: %r", school_id, exc)
        while self._queue and len(self._running) < self._s.concurrency:
            school = self._queue.pop(0)
            if school not in self._running:
                self._start(school, scheduled=True)

    async def _pick(self, school_id: str, now: float) -> tuple[str, float]:
        """The device that measures, and how long to wait for a controller holding a
        better one to claim the slot first (on the schedule)."""
        query = DeviceQuery(school_id=school_id, status=DeviceStatus.ONLINE, limit=_CANDIDATES_MAX)
        online = await self._off_loop(self._devices.list_devices, query, now)
        if not online:
            raise UplinkUnavailable(
                f"school {school_id} has no online device: a check needs one to measure from"
            )
        kinds = {d.identity.device_id: d.identity.kind for d in online}
        able = [(d, kind) for d, kind in kinds.items() if self._courier.can_measure(d)]
        device = pick_device(able)
        if device is None:
            raise UplinkElsewhere(
                f"none of school {school_id}'s {len(online)} online device(s) can measure "
                "here: their agents are too old, or connected to another controller"
            )
        elsewhere = [kind for d, kind in kinds.items() if not self._courier.holds(d)]
        return device, claim_delay(kinds[device], elsewhere, self._s.prefer_wait)

    async def _run(self, school_id: str, scheduled: bool) -> UplinkCheck:
        device, wait = await self._pick(school_id, self._now())
        slot = None
        if scheduled:
            await asyncio.sleep(wait)
            slot = last_slot(school_id, self._s.interval, self._now())
        now = self._now()
        check = UplinkCheck(school_id, now, device, self._s.bytes)
        started = await self._off_loop(
            self._store.start_uplink_check, check, now - self.deadline, slot
        )
        if not started:
            raise UplinkElsewhere(
                f"a check of school {school_id} is running, or was made in its slot already"
                if scheduled
                else f"a check of school {school_id} is running already"
            )
        label = f"school={school_id} device={device}"
        try:
            token = await self._off_loop(self._tokens.issue, self._s.bytes, self._s.timeout, label)
        except StoreError as exc:
            failed = Measurement(0, None, None, f"no transfer token: {exc}")
            return await self._finish(check, failed)
        order = MeasureOrder(
            f"uplink-{school_id}-{uuid.uuid4().hex[:12]}",
            self._s.port,
            PATH_PREFIX + token,
            self._s.bytes,
            self._s.timeout,
        )
        log.info("uplink check started %s cmd=%s bytes=%d", label, order.command_id, order.bytes)
        try:
            measured = await self._measure(device, order, check)
        except asyncio.CancelledError:
            await self._finish(check, Measurement(0, None, None, "the controller stopped"))
            raise
        finally:
            self._waiting.pop(order.command_id, None)
            await self._revoke(token, label)
        return await self._finish(check, measured)

    async def _revoke(self, token: str, label: str) -> None:
        try:
            await self._off_loop(self._tokens.revoke, token)
        except StoreError as exc:
            # It expires by itself within the transfer's timeout.
            log.warning("uplink token not revoked %s: %s", label, exc)

    async def _measure(self, device: str, order: MeasureOrder, check: UplinkCheck) -> Measurement:
        pending = _Pending(check, asyncio.get_running_loop().create_future())
        self._waiting[order.command_id] = pending
        if not self._courier.send(device, order):
            return Measurement(0, None, None, f"device {device} disconnected before the order")
        try:
            answer = await asyncio.wait_for(pending.answer, self.deadline)
        except TimeoutError:
            return Measurement(0, None, None, f"no answer from {device} in {self.deadline:g}s")
        return judge(order.bytes, answer.ok, answer.message, answer.received, answer.seconds)

    async def _finish(self, check: UplinkCheck, m: Measurement) -> UplinkCheck:
        received = m.received if m.mbps is not None else check.bytes
        ended = await self._off_loop(
            self._store.finish_uplink_check,
            check.school_id,
            check.started_at,
            received,
            m.seconds,
            m.mbps,
            m.error,
        )
        if ended is None:  # failed by a sweep meanwhile: what the device said stands here
            ended = UplinkCheck(
                check.school_id, check.started_at, check.device_id, received, m.seconds, m.mbps
            )
        self._metrics.ended(m.mbps is not None)
        if m.mbps is not None:
            log.info(
                "uplink check done school=%s device=%s mbps=%.1f bytes=%d seconds=%.3f",
                check.school_id,
                check.device_id,
                m.mbps,
                received,
                m.seconds or 0.0,
            )
        else:
            log.warning(
                "uplink check failed school=%s device=%s error=%s",
                check.school_id,
                check.device_id,
                m.error,
            )
        return ended

    async def run(self) -> None:
        """The schedule, until cancelled; a failed look is retried after a backoff."""
        if self._s.interval <= 0:
            return
        retry = Retry("uplink_checks", self._failures)
        since = self._now()
        while True:
            try:
                delay = await self.tick(since)
                retry.succeeded()
            except Exception as exc:
                delay = retry.failed(exc)
            await asyncio.sleep(delay)

    async def tick(self, since: float) -> float:
        """Starts the checks due now; returns the seconds until the next may be."""
        now = self._now()
        if now - self._swept >= _SWEEP_EVERY:
            self._swept = now
            expired = await self._off_loop(
                self._store.expire_uplink_checks,
                now - self.deadline - _SWEEP_MARGIN,
                "no answer: the controller running the check stopped",
            )
            await self._off_loop(self._store.prune_uplink_checks, now - _KEEP)
            if expired:
                log.warning("uplink checks left running failed count=%d", expired)
        counts = await self._off_loop(self._devices.fleet_counts, now)
        schools = {c.school_id for c in counts if c.online} - self._running.keys()
        last = await self._off_loop(self._store.uplink_last_started)
        for school, at in self._skipped.items():
            last[school] = max(at, last.get(school, at))
        due = due_schools(schools, last, since, now, self._s.interval)
        free = max(0, self._s.concurrency - len(self._running))
        for school in due[:free]:
            self._start(school, scheduled=True)
        self._queue = due[free:]
        # Schools coming online are looked for at least once an interval.
        idle = min(_IDLE_MAX, self._s.interval)
        upcoming = next_due(schools, self._s.interval, now)
        wait = idle if upcoming is None else upcoming - now
        return min(idle, max(_IDLE_MIN, wait))

    async def close(self) -> None:
        """Stops the checks running here; each is recorded as failed."""
        self._queue.clear()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
