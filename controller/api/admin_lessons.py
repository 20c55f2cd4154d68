"""AdminService's lessons: import a schedule, list the day's lessons, launch by hand."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import asdict
from zoneinfo import ZoneInfo

from controller.api.field_ranges import time_problem
from controller.api.guard import Call, Guard, guarded, invalid
from controller.api.imports import import_done
from controller.lessons.days import day_bounds, named_day_bounds
from controller.lessons.nudge import DispatchNudge
from controller.lessons.store import ImportCounts, LessonQuery, LessonStore
from controller.people import access
from controller.people.access import Need
from inventory.model import valid_id
from inventory.row_fields import RowError
from inventory.schedule import ScheduleRow, check_rows
from inventory.schedule_rows import check_row, lesson_by_hand
from protos.schoolfleet.v1 import admin_pb2
from wire.lessons import record_to_pb
from wire.mapping import seconds, timestamp

# Rows in one import: a city's week is ~700,000; send it in parts.
log = logging.getLogger(__name__)

# How long a launch by hand waits for the dispatcher's pass that sends it.
_DISPATCH_WAIT = 5.0
IMPORT_MAX = 200_000
MANUAL_MINUTES_DEFAULT, MANUAL_MINUTES_MAX = 45, 12 * 60


def _checked(s: admin_pb2.ScheduledLesson) -> ScheduleRow | RowError:
    """The controller checks every row itself, by the schedule file's rules."""
    fields: dict[str, object] = {
        "school": s.school_id,
        "room": s.room_id,
        "class": s.class_name,
        "subject": s.subject,
        "teacher": s.teacher,
        "content_url": s.content_url,
        "remote": s.remote,
    }
    return check_row(s.line, fields, seconds(s.starts_at), seconds(s.ends_at))


def _bad_time(s: admin_pb2.ScheduledLesson) -> str | None:
    """Why a row's start or end is no time at all, or None."""
    for ts, name in ((s.starts_at, "start"), (s.ends_at, "end")):
        why = time_problem(ts.seconds, ts.nanos, name)
        if why is not None:
            return why
    return None


class LessonAdmin:
    """A schedule's import, the day's lessons, a lesson launched by hand."""

    def __init__(
        self,
        guard: Guard,
        lessons: LessonStore,
        dispatcher: DispatchNudge | None,
        content_hosts: Iterable[str],
        zone: ZoneInfo,
    ) -> None:
        self.guard = guard
        self._lessons = lessons
        self._dispatcher = dispatcher
        self._content_hosts = frozenset(content_hosts)
        self._zone = zone

    async def _check(
        self, rows: list[ScheduleRow | RowError]
    ) -> tuple[list[ScheduleRow], list[RowError]]:
        good = [r for r in rows if isinstance(r, ScheduleRow)]
        rooms = {(r.lesson.school_id, r.lesson.room_id) for r in good}
        if not good:
            return [], [r for r in rows if isinstance(r, RowError)]
        known = await self.guard.off_loop(self._lessons.known_rooms, rooms)
        since = min(r.lesson.starts_at for r in good)
        until = max(r.lesson.ends_at for r in good)
        stored = await self.guard.off_loop(self._lessons.lessons_in_rooms, rooms, since, until)
        return check_rows(
            rows, known, self._content_hosts, [x for room in stored.values() for x in room]
        )

    @guarded("lessons.import", Need.CHANGE, audited=True)
    async def ImportLessons(
        self, request: admin_pb2.ImportLessonsRequest, call: Call
    ) -> admin_pb2.ImportLessonsResponse:
        call.target = request.source[:200]
        if len(request.lessons) > IMPORT_MAX:
            raise invalid(f"at most {IMPORT_MAX} rows per import, got {len(request.lessons)}")
        rows: list[ScheduleRow | RowError] = []
        denied: dict[str, str] = {}
        for s in request.lessons:
            bad_time = _bad_time(s)
            row = RowError(s.line, bad_time) if bad_time else _checked(s)
            if isinstance(row, ScheduleRow):
                why = access.refusal(call.who, Need.CHANGE, call.action, row.lesson.school_id)
                if why is not None:
                    denied.setdefault(row.lesson.school_id, why)
                    row = RowError(s.line, why)
            rows.append(row)
        good, errors = await self._check(rows)
        counts = ImportCounts(0, 0, 0, 0)
        if good and not request.dry_run:
            lessons = [r.lesson for r in good]
            counts = await self.guard.off_loop(
                self._lessons.save_lessons, lessons, self.guard.now()
            )
            if (counts.added or counts.updated) and self._dispatcher is not None:
                self._dispatcher.wake()
        found = await import_done(
            self.guard,
            call,
            dry_run=request.dry_run,
            rows=len(request.lessons),
            counts=asdict(counts),
            schools={r.lesson.school_id for r in good},
            denied=denied,
            errors=errors,
        )
        return admin_pb2.ImportLessonsResponse(**asdict(counts), errors=found)

    @guarded("lessons.list", Need.READ)
    async def ListLessons(
        self, request: admin_pb2.ListLessonsRequest, call: Call
    ) -> admin_pb2.ListLessonsResponse:
        for value, what in ((request.school_id, "school id"), (request.room_id, "room id")):
            if value and not valid_id(value):
                raise invalid(f"{what} {value[:80]!r} is not valid")
        call.target = request.school_id
        call.allow(Need.READ, request.school_id or None)
        now = self.guard.now()
        try:
            since, until = (
                named_day_bounds(request.day, now, self._zone)
                if request.day
                else day_bounds(now, self._zone)
            )
        except ValueError as e:
            raise invalid(str(e)) from None
        if request.HasField("since"):
            since = seconds(request.since)
        if request.HasField("until"):
            until = seconds(request.until)
        query = LessonQuery(
            since=since,
            until=until,
            school_id=request.school_id or None,
            room_id=request.room_id or None,
            schools=call.who.scope,
        )
        records = await self.guard.off_loop(self._lessons.list_lessons, query)
        return admin_pb2.ListLessonsResponse(
            lessons=[record_to_pb(r) for r in records],
            since=timestamp(since),
            until=timestamp(until),
        )

    @guarded("lessons.launch", Need.CHANGE, audited=True)
    async def LaunchLesson(
        self, request: admin_pb2.LaunchLessonRequest, call: Call
    ) -> admin_pb2.LessonInfo:
        for value, what in ((request.school_id, "school id"), (request.room_id, "room id")):
            if not valid_id(value):
                raise invalid(f"{what} {value[:80]!r} is not valid")
        call.target = request.room_id
        call.allow(Need.CHANGE, request.school_id)
        minutes = request.minutes or MANUAL_MINUTES_DEFAULT
        if not 1 <= minutes <= MANUAL_MINUTES_MAX:
            raise invalid(f"minutes must be 1 to {MANUAL_MINUTES_MAX}, got {minutes}")
        now = self.guard.now()
        lesson = lesson_by_hand(
            request.school_id,
            request.room_id,
            now,
            now + minutes * 60,
            request.title or "launched by hand",
            request.url,
        )
        if isinstance(lesson, RowError):
            raise invalid(lesson.message)
        # Not checked against the schedule: a lesson by hand takes the room over.
        known = await self.guard.off_loop(
            self._lessons.known_rooms, [(request.school_id, request.room_id)]
        )
        _, errors = check_rows([ScheduleRow(0, lesson)], known, self._content_hosts, [])
        if errors:
            raise invalid(errors[0].message)
        await self.guard.off_loop(self._lessons.save_lessons, [lesson], now)
        if self._dispatcher is not None:
            try:
                async with asyncio.timeout(_DISPATCH_WAIT):
                    await self._dispatcher.pass_now()
            except TimeoutError:
                log.warning("lesson by hand not dispatched yet lesson=%s", lesson.lesson_id)
        records = await self.guard.off_loop(
            self._lessons.list_lessons,
            LessonQuery(now - 1, now + 1, request.school_id, request.room_id),
        )
        record = next(r for r in records if r.lesson.lesson_id == lesson.lesson_id)
        call.done = f"{lesson.lesson_id}: {record.state.value}, {record.panels} panel(s)"
        return record_to_pb(record)
