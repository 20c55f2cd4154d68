"""The lesson dispatcher: the schedule becomes LaunchLesson commands on the panels.

A lesson is dispatched ``lead`` seconds before it starts: in one store transaction a
LaunchLesson command per panel of its room goes into the outbox and the lesson is
marked dispatched, so a restart neither loses nor repeats it. Connected panels get the
command at once; the others when their stream opens (AgentService sends a device's
pending commands after Welcome) until the lesson ends. At the end an EndLesson goes
to the connected panels, and ``settle`` seconds later (for answers still in spools)
the lesson's outcome is recorded.

The dispatcher sleeps until the next thing is due (or ``wake()``: a new schedule),
never more than ``_IDLE_MAX`` seconds, so a lesson is not late by a polling interval.
It is the only one that dispatches: a lesson launched by hand is saved and the
dispatcher woken (``pass_now``). A failed pass is retried with backoff
(controller/loops.py). Panels are reached through a ``PanelCourier``
(controller/api/lesson_orders.py: the devices' streams); nothing here knows the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from controller.lessons.outcome import outcome
from controller.lessons.store import LessonStore, OutboxCommand
from controller.loops import LoopFailures, Retry
from controller.offload import Offload
from inventory.lessons import Lesson, LessonState

log = logging.getLogger(__name__)
T = TypeVar("T")

_IDLE_MAX = 5.0
# Lessons dispatched per store transaction.
_BATCH = 500


@dataclass(frozen=True, slots=True)
class LaunchOrder:
    """What one panel is told to open; the same order (and id) on every retry."""

    command_id: str
    lesson_id: str
    url: str
    starts_at: float
    ends_at: float
    title: str
    remote: bool
    issued_at: float


def launch_order(lesson: Lesson, device_id: str, now: float) -> LaunchOrder:
    return LaunchOrder(
        command_id=f"launch:{lesson.lesson_id}:{device_id}",
        lesson_id=lesson.lesson_id,
        url=lesson.content_url,
        starts_at=lesson.starts_at,
        ends_at=lesson.ends_at,
        title=f"{lesson.class_name} {lesson.subject}".strip(),
        remote=lesson.remote,
        issued_at=now,
    )


class PanelCourier(Protocol):
    """Gets lesson commands to panels (controller/api/lesson_orders.py: their streams)."""

    def encode(self, order: LaunchOrder) -> bytes:
        """The order as the outbox keeps it: sent as is when the panel's stream opens."""

    def launch(self, device_id: str, order: LaunchOrder) -> None:
        """Sends the order now if the panel's stream is on this controller."""

    def end(self, device_id: str, lesson_id: str, now: float) -> None:
        """Tells the panel the lesson ended, if its stream is on this controller."""


class Dispatcher:
    """Runs the schedule: dispatch, end, settle."""

    def __init__(
        self,
        store: LessonStore,
        executor: ThreadPoolExecutor,
        courier: PanelCourier,
        failures: LoopFailures | None,
        *,
        lead: float,
        settle: float,
        on_time: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._off_loop = Offload(executor)
        self._courier = courier
        self._failures = failures
        self._lead = lead
        self._settle = settle
        self._on_time = on_time
        self._now = now
        self._wake = asyncio.Event()
        # Passes started and ended, and an event set at the end of each: pass_now waits
        # for a pass that started after it was called.
        self._started = 0
        self._ended = 0
        self._pass_ended = asyncio.Event()

    def wake(self) -> None:
        """Look at the schedule now: it changed."""
        self._wake.set()

    async def pass_now(self) -> None:
        """Wakes the dispatcher and returns once a pass that started after this call
        has ended (bound it with ``asyncio.timeout``: the store may be down)."""
        wanted = self._started + 1
        self.wake()
        while self._ended < wanted:
            await self._pass_ended.wait()

    async def run(self) -> None:
        """Until cancelled; a failed pass is retried after a backoff, woken or not."""
        retry = Retry("lesson_dispatcher", self._failures)
        while True:
            # Cleared before the pass: a wake during it is not lost.
            self._wake.clear()
            self._started += 1
            try:
                await self.tick()
                due = await self._off_loop(self._store.next_wake, self._lead, self._settle)
                retry.succeeded()
                backoff = None
            except Exception as exc:
                backoff = retry.failed(exc)
            self._ended += 1
            self._pass_ended.set()
            self._pass_ended = asyncio.Event()
            if backoff is not None:
                await asyncio.sleep(backoff)
                continue
            delay = _IDLE_MAX if due is None else min(_IDLE_MAX, max(0.0, due - self._now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def tick(self) -> None:
        """Does whatever is due now."""
        now = self._now()
        due = await self._off_loop(self._store.due_lessons, now + self._lead, now)
        for start in range(0, len(due), _BATCH):
            await self._dispatch(due[start : start + _BATCH], now)
        for lesson in await self._off_loop(self._store.missed_lessons, now):
            # The controller was down for the whole lesson: nobody was told.
            await self._off_loop(
                self._store.settle, lesson.lesson_id, LessonState.FAILED, "not dispatched", now
            )
            log.warning("lesson missed lesson=%s reason=not dispatched", lesson.lesson_id)
        for lesson, panels in await self._off_loop(self._store.lessons_ending, now):
            self._end(lesson, panels, now)
        for lesson, results in await self._off_loop(
            self._store.lessons_to_settle, now - self._settle
        ):
            state, reason = outcome(lesson.starts_at, results, self._on_time)
            await self._off_loop(self._store.settle, lesson.lesson_id, state, reason, now)
            log.info("lesson settled lesson=%s state=%s %s", lesson.lesson_id, state, reason)

    async def _dispatch(self, lessons: list[Lesson], now: float) -> None:
        # Thousands of lessons may start in the same minute: the work per lesson is
        # kept small (its id formatted once, one log line per batch, not per lesson).
        rooms = await self._off_loop(
            self._store.panels_in_rooms, [(x.school_id, x.room_id) for x in lessons]
        )
        planned: list[tuple[str, list[OutboxCommand]]] = []
        orders: dict[str, list[tuple[str, LaunchOrder]]] = {}
        encode = self._courier.encode
        for lesson in lessons:
            lesson_id = lesson.lesson_id
            sent: list[tuple[str, LaunchOrder]] = []
            commands = []
            for device_id in rooms.get((lesson.school_id, lesson.room_id), []):
                order = launch_order(lesson, device_id, now)
                commands.append(
                    OutboxCommand(
                        order.command_id, device_id, lesson_id, encode(order), lesson.ends_at
                    )
                )
                sent.append((device_id, order))
            planned.append((lesson_id, commands))
            orders[lesson_id] = sent
        dispatched = await self._off_loop(self._store.dispatch, planned, now)
        panels = empty = 0
        for lesson_id in dispatched:
            sent = orders[lesson_id]
            for device_id, order in sent:
                self._courier.launch(device_id, order)
            if sent:
                panels += len(sent)
                log.debug("lesson dispatched lesson=%s panels=%d", lesson_id, len(sent))
            else:
                empty += 1
                log.warning("lesson has no panel lesson=%s", lesson_id)
        if dispatched:
            log.info(
                "lessons dispatched count=%d panels=%d no_panel=%d first=%s",
                len(dispatched),
                panels,
                empty,
                dispatched[0],
            )

    def _end(self, lesson: Lesson, panels: list[str], now: float) -> None:
        for device_id in panels:
            self._courier.end(device_id, lesson.lesson_id, now)
        log.info("lesson ended lesson=%s panels=%d", lesson.lesson_id, len(panels))
