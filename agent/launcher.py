"""The lesson launcher: shows a lesson's URL in the kiosk program for the lesson's time.

One lesson at a time. LaunchLesson starts the configured program (an argv template,
never a shell) in its own process group, once the URL has passed the allow-list of
content hosts; the program is watched, started once more if it dies during the
lesson, and its whole process group is stopped at the lesson's end time, on
EndLesson, when another lesson replaces it, or when the agent stops. Each outcome is
a LessonEvent value handed to ``emit`` (the link puts it in wire form and spools it):
launched, relaunched, failed with a reason, ended.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from agent.lessons import LessonEvent, LessonLaunch
from common.content_hosts import url_allowed
from inventory.lessons import EventKind, FailReason

log = logging.getLogger(__name__)

# Seconds between SIGTERM to the program's group and SIGKILL. Chromium exits within
# ~0.1 s of SIGTERM; the rest of its group is gone once reaped (see _KILL_WAIT).
STOP_GRACE = 5.0
# Seconds to wait for the group to vanish after SIGKILL, before giving up on it. Its
# members that the leader left behind count until PID 1 reaps them, which a container's
# init may do only every second or two.
_KILL_WAIT = 5.0
# Longest wait before the end time is compared with the clock again: the wall clock
# may be set during a lesson (NTP soon after boot), and lessons end by the wall clock.
_RECHECK = 30.0
# LaunchLesson command ids remembered, so that a resent command runs once.
_SEEN_COMMANDS = 256
_PLACEHOLDER = re.compile(r"\{(url|lesson_id)\}")


def expand_argv(template: Sequence[str], url: str, lesson_id: str) -> list[str]:
    """The template with {url} and {lesson_id} replaced in each item.

    One pass, so a URL that contains "{lesson_id}" stays as it is; not str.format,
    which would choke on the braces URLs may contain.
    """
    values = {"url": url, "lesson_id": lesson_id}
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], item) for item in template]


def exit_text(returncode: int | None) -> str:
    """A process's end in words: "exit status 1", "killed by SIGSEGV"."""
    if returncode is None:
        return "still running"
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


@dataclass(eq=False)
class _Lesson:
    """A lesson whose program was started; its watcher task owns ``process``."""

    lesson_id: str
    command_id: str
    ends_at: float
    argv: list[str]
    process: asyncio.subprocess.Process
    # Set to stop the lesson early; end_message says what ENDED reports (None: no
    # event, for close()).
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    end_message: str | None = None
    watcher: asyncio.Task[None] | None = None


class Launcher:
    """Runs lessons on the kiosk program, one at a time, and reports what happened.

    ``argv_template``: the program and its arguments ({url}, {lesson_id}); empty:
    every launch fails with NO_PROGRAM. ``allowed_hosts`` and ``has_network`` are
    asked at each launch (the hosts come with the controller's Welcome). ``now``
    gives Unix seconds. ``env``: the program's environment; None: the agent's.
    """

    def __init__(
        self,
        argv_template: Sequence[str],
        emit: Callable[[LessonEvent], None],
        allowed_hosts: Callable[[], Collection[str]],
        has_network: Callable[[], bool],
        now: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self._template = tuple(argv_template)
        self._emit = emit
        self._allowed_hosts = allowed_hosts
        self._has_network = has_network
        self._now = now
        self._env = None if env is None else dict(env)
        self._grace = stop_grace
        self._current: _Lesson | None = None
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        # launch, end and close wait for each other: each may stop a program first.
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def lesson_id(self) -> str | None:
        """The lesson being shown, if any."""
        return None if self._current is None else self._current.lesson_id

    @property
    def pid(self) -> int | None:
        """The running program's pid, which is also its process group id."""
        return None if self._current is None else self._current.process.pid

    async def launch(self, command_id: str, cmd: LessonLaunch) -> None:
        """Handles LaunchLesson: starts the lesson now, or reports why not.

        Shown at once, whatever ``starts_at`` says: the controller sends the command
        shortly before the start. Returns once the program was started (or not);
        the lesson then runs on its own until its end.
        """
        async with self._lock:
            await self._launch(command_id, cmd)

    async def end(self, lesson_id: str) -> None:
        """Handles EndLesson: stops the lesson's program now and reports ENDED."""
        async with self._lock:
            lesson = self._current
            if lesson is None or lesson.lesson_id != lesson_id:
                log.info("lesson not running, nothing to end lesson=%s", lesson_id)
                return
            await self._stop(lesson, "ended by EndLesson")

    async def close(self) -> None:
        """Stops any running program, for the agent's shutdown; later launches are
        refused. No ENDED: the lesson did not end, and the controller sends the
        LaunchLesson again when the agent is back, until the lesson's end.
        """
        async with self._lock:
            self._closed = True
            if self._current is not None:
                await self._stop(self._current, None)

    async def _launch(self, command_id: str, cmd: LessonLaunch) -> None:
        lesson_id = cmd.lesson_id
        skip = self._skip(command_id, cmd)
        self._seen[command_id] = None
        if len(self._seen) > _SEEN_COMMANDS:
            self._seen.popitem(last=False)
        if skip is not None:
            log.info("lesson not launched lesson=%s cmd=%s: %s", lesson_id, command_id, skip)
            return
        # Checked before the running lesson is stopped: a lesson that cannot be shown
        # leaves the previous one on screen until that one's end.
        refusal = self._refusal(cmd)
        if refusal is not None:
            self._failed(lesson_id, command_id, *refusal)
            return
        if self._current is not None:
            await self._stop(self._current, f"replaced by lesson {lesson_id}")
        argv = expand_argv(self._template, cmd.url, lesson_id)
        try:
            process = await self._start(argv)
        except OSError as exc:
            message = f"cannot start {argv[0]}: {exc.strerror or exc}"
            self._failed(lesson_id, command_id, FailReason.NO_PROGRAM, message)
            return
        lesson = _Lesson(lesson_id, command_id, cmd.ends_at, argv, process)
        self._current = lesson
        self._send(lesson, EventKind.LAUNCHED, message=f"{argv[0]} started, pid {process.pid}")
        lesson.watcher = asyncio.create_task(self._watch(lesson), name=f"lesson {lesson_id}")

    def _skip(self, command_id: str, cmd: LessonLaunch) -> str | None:
        """Why the command is not acted on at all, without an event; None: it is."""
        if self._closed:
            return "the launcher is closed (the agent is stopping)"
        if command_id in self._seen:
            return "command already handled"
        ends_at = cmd.ends_at
        if ends_at <= self._now():
            return f"lesson already over (ends_at={ends_at:.0f})"
        current = self._current
        if current is not None and current.lesson_id == cmd.lesson_id:
            return f"lesson already running (cmd={current.command_id})"
        return None

    def _refusal(self, cmd: LessonLaunch) -> tuple[FailReason, str] | None:
        """Why the lesson cannot be shown (a FAILED event); None: it can be tried."""
        refused = url_allowed(cmd.url, self._allowed_hosts())
        if refused is not None:
            return FailReason.URL_REFUSED, refused
        if not self._template:
            return FailReason.NO_PROGRAM, "no kiosk program is configured (kiosk_argv is empty)"
        if not self._has_network():
            return FailReason.NO_NETWORK, "no network to reach the content"
        return None

    async def _start(self, argv: list[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            # Nothing of the agent's: no stdin to read, and a browser's chatter
            # (it is loud) would only fill the journal.
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=self._env,
            # Its own session and process group, so that stopping it reaches the
            # whole browser tree (renderers, GPU and zygote processes) by killpg.
            start_new_session=True,
        )

    async def _stop(self, lesson: _Lesson, end_message: str | None) -> None:
        lesson.end_message = end_message
        lesson.stop.set()
        if lesson.watcher is not None:
            # Shielded: a caller that is cancelled must not leave the program half-stopped.
            await asyncio.shield(lesson.watcher)

    async def _watch(self, lesson: _Lesson) -> None:
        """Owns the lesson's program until the end time, a stop, or a second death."""
        relaunched = False
        try:
            while True:
                why = await self._wait(lesson)
                if why != "exited":
                    break
                status = exit_text(lesson.process.returncode)
                # The leader is gone; what it left in its group goes too.
                await self._stop_group(lesson.process)
                if relaunched:
                    message = f"the program died again during the lesson: {status}"
                    self._send(lesson, EventKind.FAILED, FailReason.CRASHED, message)
                    return
                relaunched = True
                try:
                    lesson.process = await self._start(lesson.argv)
                except OSError as exc:
                    message = f"died ({status}), cannot start it again: {exc.strerror or exc}"
                    self._send(lesson, EventKind.FAILED, FailReason.NO_PROGRAM, message)
                    return
                message = f"the program died ({status}); started again, pid {lesson.process.pid}"
                self._send(lesson, EventKind.RELAUNCHED, message=message)
            await self._stop_group(lesson.process)
            if why == "time":
                self._send(lesson, EventKind.ENDED, message="end time reached")
            elif lesson.end_message is not None:
                self._send(lesson, EventKind.ENDED, message=lesson.end_message)
            else:
                log.info("lesson program stopped with the agent lesson=%s", lesson.lesson_id)
        finally:
            # Cancelled (the loop shutting down) or a bug: nothing may outlive us.
            if lesson.process.returncode is None:
                _signal_group(lesson.process.pid, signal.SIGKILL)
            if self._current is lesson:
                self._current = None

    async def _wait(self, lesson: _Lesson) -> str:
        """Waits for "stop" (asked to), "time" (the end time) or "exited"."""
        while True:
            if lesson.stop.is_set():
                return "stop"
            remaining = lesson.ends_at - self._now()
            if remaining <= 0:
                return "time"
            exited = asyncio.ensure_future(lesson.process.wait())
            stopping = asyncio.ensure_future(lesson.stop.wait())
            try:
                await asyncio.wait(
                    {exited, stopping},
                    timeout=min(remaining, _RECHECK),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                exited.cancel()
                stopping.cancel()
            # A program closing at the end time itself did not crash.
            if lesson.process.returncode is not None and not lesson.stop.is_set():
                return "exited" if lesson.ends_at > self._now() else "time"

    async def _stop_group(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM to the program's group, SIGKILL after the grace period."""
        pgid = process.pid  # start_new_session: the program leads its own group
        if not _signal_group(pgid, signal.SIGTERM):
            await process.wait()
            return
        if await _gone_within(process, self._grace):
            return
        log.warning(
            "kiosk program still running %gs after SIGTERM, killed pid=%d", self._grace, pgid
        )
        _signal_group(pgid, signal.SIGKILL)
        if not await _gone_within(process, _KILL_WAIT):
            log.error("kiosk program's process group outlived SIGKILL pgid=%d", pgid)

    def _failed(self, lesson_id: str, command_id: str, reason: FailReason, message: str) -> None:
        self._send_event(lesson_id, command_id, EventKind.FAILED, reason, message)

    def _send(
        self,
        lesson: _Lesson,
        kind: EventKind,
        reason: FailReason | None = None,
        message: str = "",
    ) -> None:
        self._send_event(lesson.lesson_id, lesson.command_id, kind, reason, message)

    def _send_event(
        self,
        lesson_id: str,
        command_id: str,
        kind: EventKind,
        reason: FailReason | None,
        message: str,
    ) -> None:
        event = LessonEvent(lesson_id, command_id, kind, reason, message, at=self._now())
        # Named as the wire's enums spell them (KIND_LAUNCHED, REASON_NO_PROGRAM), as
        # the journal has always read. A reason only where there is one: a launch that
        # worked has none to give.
        why = f" reason=REASON_{reason.name}" if reason is not None else ""
        log.info(
            "lesson event kind=KIND_%s lesson=%s cmd=%s%s: %s",
            kind.name,
            lesson_id,
            command_id,
            why,
            message,
        )
        try:
            self._emit(event)
        except Exception:
            # The emitter's bug must not leave a program running unwatched.
            log.exception("lesson event not emitted lesson=%s cmd=%s", lesson_id, command_id)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signals the process group; False if it has no process left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # No member is ours to signal (a setuid sandbox helper is left): still there.
        return True
    return True


async def _gone_within(process: asyncio.subprocess.Process, limit: float) -> bool:
    """Whether the leader exits and its group empties within ``limit`` seconds."""
    try:
        async with asyncio.timeout(limit):
            await process.wait()
            # The group's other members are not our children: no exit to wait on, and
            # no event either, so the group is polled.
            while _signal_group(process.pid, 0):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        return False
    return True
