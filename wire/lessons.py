"""Lessons between our values and the admin API's messages, both directions."""

from __future__ import annotations

from inventory.lessons import Lesson, LessonRecord
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import timestamp


def scheduled_to_pb(lesson: Lesson, line: int = 0) -> admin_pb2.ScheduledLesson:
    return admin_pb2.ScheduledLesson(
        line=line,
        school_id=lesson.school_id,
        room_id=lesson.room_id,
        starts_at=timestamp(lesson.starts_at),
        ends_at=timestamp(lesson.ends_at),
        class_name=lesson.class_name,
        subject=lesson.subject,
        teacher=lesson.teacher,
        content_url=lesson.content_url,
        remote=lesson.remote,
    )


def record_to_pb(r: LessonRecord) -> admin_pb2.LessonInfo:
    out = admin_pb2.LessonInfo(
        lesson_id=r.lesson.lesson_id,
        lesson=scheduled_to_pb(r.lesson),
        state=r.state.value,
        reason=r.reason,
        panels=r.panels,
        launched=r.launched,
        failed=r.failed,
    )
    if r.dispatched_at is not None:
        out.dispatched_at.CopyFrom(timestamp(r.dispatched_at))
    return out
