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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from controller.fleet.sessions import SessionRegistry
from controller.lessons.outcome import outcome
from controller.store import Store
from controller.store.lessons_protocol import OutboxCommand
from inventory.lessons import Lesson, LessonState
from protos.mapping import timestamp
from protos.schoolfleet.v1 import agent_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

_IDLE_MAX = 5.0
# Lessons dispatched per store transaction.
_BATCH = 500


def launch_command(lesson: Lesson, lesson_id: str, device_id: str, now: float) -> agent_pb2.Command:
    """The LaunchLesson command for one panel; its id is the same on every retry."""
    return agent_pb2.Command(
        command_id=f"launch:{lesson_id}:{device_id}",
        issued_at=timestamp(now),
        launch_lesson=agent_pb2.LaunchLesson(
            lesson_id=lesson_id,
            url=lesson.content_url,
            starts_at=timestamp(lesson.starts_at),
            ends_at=timestamp(lesson.ends_at),
            title=f"{lesson.class_name} {lesson.subject}".strip(),
            remote=lesson.remote,
        ),
    )


class Dispatcher:
    """Runs the schedule: dispatch, end, settle."""

    def __init__(
        self,
        store: Store,
        executor: ThreadPoolExecutor,
        sessions: SessionRegistry[agent_pb2.ControllerMessage],
        *,
        lead: float,
        settle: float,
        on_time: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._executor = executor
        self._sessions = sessions
        self._lead = lead
        self._settle = settle
        self._on_time = on_time
        self._now = now
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look at the schedule now: it changed."""
        self._wake.set()

    async def _off_loop(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self) -> None:
        """Until cancelled; a store failure is logged and tried again."""
        while True:
            try:
                await self.tick()
                due = await self._off_loop(self._store.next_wake, self._lead, self._settle)
            except Exception:
                log.exception("lesson dispatcher tick failed; trying again")
                due = None
            delay = _IDLE_MAX if due is None else min(_IDLE_MAX, max(0.0, due - self._now()))
            self._wake.clear()
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
        messages: dict[str, tuple[Lesson, list[tuple[str, agent_pb2.Command]]]] = {}
        for lesson in lessons:
            lesson_id = lesson.lesson_id
            sent: list[tuple[str, agent_pb2.Command]] = []
            commands = []
            for device_id in rooms.get((lesson.school_id, lesson.room_id), []):
                command = launch_command(lesson, lesson_id, device_id, now)
                commands.append(
                    OutboxCommand(
                        command.command_id,
                        device_id,
                        lesson_id,
                        command.SerializeToString(),
                        lesson.ends_at,
                    )
                )
                sent.append((device_id, command))
            planned.append((lesson_id, commands))
            messages[lesson_id] = (lesson, sent)
        dispatched = await self._off_loop(self._store.dispatch, planned, now)
        panels = empty = 0
        for lesson_id in dispatched:
            lesson, sent = messages[lesson_id]
            for device_id, command in sent:
                session = self._sessions.get(device_id)
                if session is not None:
                    session.send(agent_pb2.ControllerMessage(command=command))
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
            session = self._sessions.get(device_id)
            if session is None:
                continue
            session.send(
                agent_pb2.ControllerMessage(
                    command=agent_pb2.Command(
                        command_id=f"end:{lesson.lesson_id}:{device_id}",
                        issued_at=timestamp(now),
                        end_lesson=agent_pb2.EndLesson(lesson_id=lesson.lesson_id),
                    )
                )
            )
        log.info("lesson ended lesson=%s panels=%d", lesson.lesson_id, len(panels))
