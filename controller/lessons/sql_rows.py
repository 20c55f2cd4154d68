"""A lesson's row in either database: its columns, read and bound."""

from __future__ import annotations

from controller.store.sql import Row
from inventory.lessons import Lesson

LESSON_COLUMNS = (
    "school_id, room_id, starts_at, ends_at, class_name, subject, teacher, content_url, "
    "remote, manual"
)


def lesson_of(r: Row) -> Lesson:
    """The lesson a row holds (its LESSON_COLUMNS)."""
    return Lesson(
        school_id=r["school_id"],
        room_id=r["room_id"],
        starts_at=r["starts_at"],
        ends_at=r["ends_at"],
        class_name=r["class_name"],
        subject=r["subject"],
        teacher=r["teacher"],
        content_url=r["content_url"],
        remote=bool(r["remote"]),
        manual=bool(r["manual"]),
    )


def lesson_values(lesson: Lesson) -> tuple[object, ...]:
    """The lesson's values in the order of LESSON_COLUMNS."""
    x = lesson
    return (
        x.school_id,
        x.room_id,
        x.starts_at,
        x.ends_at,
        x.class_name,
        x.subject,
        x.teacher,
        x.content_url,
        int(x.remote),
        int(x.manual),
    )
