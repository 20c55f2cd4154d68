"""Lessons: the AdminService calls behind `schoolctl lessons`."""

from __future__ import annotations

from collections.abc import Sequence

from cli.client.connection import Connection
from cli.client.parts import send_in_parts
from cli.client.values import ImportAnswer, LessonInfo
from inventory.lessons import Lesson
from inventory.schedule import ScheduleRow
from protos.schoolfleet.v1 import admin_pb2
from wire.lessons import scheduled_to_pb
from wire.mapping import seconds


def _info_from_pb(info: admin_pb2.LessonInfo) -> LessonInfo:
    s = info.lesson
    return LessonInfo(
        lesson_id=info.lesson_id,
        lesson=Lesson(
            school_id=s.school_id,
            room_id=s.room_id,
            starts_at=seconds(s.starts_at),
            ends_at=seconds(s.ends_at),
            class_name=s.class_name,
            subject=s.subject,
            teacher=s.teacher,
            content_url=s.content_url,
            remote=s.remote,
        ),
        state=info.state,
        reason=info.reason,
        dispatched_at=seconds(info.dispatched_at) if info.HasField("dispatched_at") else None,
        panels=info.panels,
        launched=info.launched,
        failed=info.failed,
    )


class LessonsClient:
    """Schedules sent, today's lessons and lessons by hand."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def import_rows(self, source: str, rows: Sequence[ScheduleRow], dry_run: bool) -> ImportAnswer:
        """Sends schedule rows in parts; what changed (added, updated, unchanged, locked)
        and the refused rows."""

        def send(part: list[admin_pb2.ScheduledLesson]) -> admin_pb2.ImportLessonsResponse:
            request = admin_pb2.ImportLessonsRequest(source=source, lessons=part, dry_run=dry_run)
            return self._conn.call(self._conn.stub.ImportLessons, request)

        return send_in_parts(
            ([scheduled_to_pb(r.lesson, r.line)] for r in rows),
            send,
            ("added", "updated", "unchanged", "locked"),
        )

    def today(self, school_id: str | None, room_id: str | None, day: str = "") -> list[LessonInfo]:
        """Today's lessons (the controller's time zone), or another day's (YYYY-MM-DD,
        tomorrow, yesterday), of one school or room, or all."""
        request = admin_pb2.ListLessonsRequest(
            school_id=school_id or "", room_id=room_id or "", day=day
        )
        response = self._conn.call(self._conn.stub.ListLessons, request)
        return [_info_from_pb(info) for info in response.lessons]

    def launch(
        self, school_id: str, room_id: str, url: str, minutes: int, title: str
    ) -> LessonInfo:
        """A lesson by hand, now: the room's panels open the URL."""
        request = admin_pb2.LaunchLessonRequest(
            school_id=school_id, room_id=room_id, url=url, minutes=minutes, title=title
        )
        return _info_from_pb(self._conn.call(self._conn.stub.LaunchLesson, request))
