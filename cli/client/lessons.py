"""Lessons: the AdminService calls behind `schoolctl lessons`."""

from __future__ import annotations

from cli.client.connection import Connection
from protos.schoolfleet.v1 import admin_pb2


class LessonsClient:
    """Schedules sent, today's lessons and lessons by hand."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def import_rows(
        self, source: str, lessons: list[admin_pb2.ScheduledLesson], dry_run: bool
    ) -> admin_pb2.ImportLessonsResponse:
        """Sends schedule rows; the answer counts what changed and lists refused rows."""
        request = admin_pb2.ImportLessonsRequest(source=source, lessons=lessons, dry_run=dry_run)
        return self._conn.call(self._conn.stub.ImportLessons, request)

    def today(self, school_id: str | None, room_id: str | None) -> admin_pb2.ListLessonsResponse:
        """Today's lessons (the controller's time zone), of one school or room, or all."""
        request = admin_pb2.ListLessonsRequest(school_id=school_id or "", room_id=room_id or "")
        return self._conn.call(self._conn.stub.ListLessons, request)

    def launch(self, request: admin_pb2.LaunchLessonRequest) -> admin_pb2.LessonInfo:
        """A lesson by hand, now: the room's panels open the URL."""
        return self._conn.call(self._conn.stub.LaunchLesson, request)
