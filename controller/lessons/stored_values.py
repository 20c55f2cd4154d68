"""What the lessons' store keeps of a value, the same on SQLite and PostgreSQL.

PostgreSQL's text cannot hold a NUL character, and its btree indexes hold at most
2704 bytes a row; SQLite has neither limit. So that both stores answer alike, both
shape values here first. A lesson or a room comes from a person's schedule, checked
by the inventory's rules before it gets here: one the store cannot keep exactly (a NUL,
an id too long to index) is refused with a StoreError, never kept altered. A panel's
lesson event is kept whatever it says, so that one odd event cannot fail the batch it
came in: its NULs written as the four characters ``\\x00``, its indexed lesson id cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from controller.errors import StoreError
from inventory.lessons import Lesson, LessonEvent

# Characters of a school or room id the store keeps: four bytes each at most in UTF-8,
# and two of them with a start fit an index row. The inventory's ids are 64 at most.
ID_CHARS = 200
# Characters kept of an event's lesson id: longer than any stored lesson's id (two ids
# and a time), so the cut never makes an unknown lesson's id match a stored one.
EVENT_LESSON_CHARS = 2 * ID_CHARS + 40


def storable_id(value: str) -> bool:
    """Whether a school or room could be stored under ``value`` (a lookup of any other
    finds nothing, without asking the database)."""
    return "\x00" not in value and len(value) <= ID_CHARS


def checked_room(school_id: str, room_id: str) -> None:
    """StoreError unless both stores can keep this room exactly."""
    for what, value in (("school", school_id), ("room", room_id)):
        if "\x00" in value:
            raise StoreError(
                f"{what} {written_out(value)[:80]!r}: a NUL character cannot be stored"
            )
        if len(value) > ID_CHARS:
            raise StoreError(f"{what} {value[:80]!r}...: an id over {ID_CHARS} characters")


def checked_lessons(lessons: Iterable[Lesson]) -> None:
    """StoreError naming the first lesson both stores cannot keep exactly."""
    for x in lessons:
        checked_room(x.school_id, x.room_id)
        for text in (x.class_name, x.subject, x.teacher, x.content_url):
            if "\x00" in text:
                raise StoreError(
                    f"lesson {x.lesson_id}: {written_out(text)[:80]!r}: "
                    "a NUL character cannot be stored"
                )


def written_out(value: str) -> str:
    """``value`` with its NULs written out."""
    return value.replace("\x00", "\\x00")


def stored_event(event: LessonEvent) -> LessonEvent:
    """A panel's event as both stores keep it."""
    return replace(
        event,
        lesson_id=written_out(event.lesson_id)[:EVENT_LESSON_CHARS],
        command_id=written_out(event.command_id),
        message=written_out(event.message),
    )
