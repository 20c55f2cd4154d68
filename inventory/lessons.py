"""Lessons: what the schedule says, what happened on the panels, and the outcome."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime


class LessonState(enum.StrEnum):
    """Where a lesson is; the last four are outcomes, fixed once the lesson is over."""

    SCHEDULED = "scheduled"
    # LaunchLesson commands are in the outbox for the room's panels.
    DISPATCHED = "dispatched"
    # Every panel of the room showed it, and none failed.
    HELD = "held"
    # Some panel showed it, and some other failed, was late or was never reached.
    PARTLY_HELD = "partly-held"
    # No panel showed it.
    FAILED = "failed"
    # The room had no panel when the lesson was dispatched.
    NO_DEVICE = "no-device"


class EventKind(enum.StrEnum):
    LAUNCHED = "launched"
    FAILED = "failed"
    ENDED = "ended"
    RELAUNCHED = "relaunched"


class FailReason(enum.StrEnum):
    """Why a panel did not show a lesson (LessonEvent.Reason), and the controller's own."""

    NO_PROGRAM = "no-program"
    URL_REFUSED = "url-refused"
    CRASHED = "crashed"
    NO_NETWORK = "no-network"
    # The panel never said it launched: offline, or its answer came after the lesson.
    NOT_REACHED = "not-reached"


@dataclass(frozen=True, slots=True)
class Lesson:
    """One scheduled lesson in one room."""

    school_id: str
    room_id: str
    # Seconds since the epoch (UTC); the file gave them with a time zone.
    starts_at: float
    ends_at: float
    class_name: str
    subject: str
    teacher: str
    content_url: str
    remote: bool
    # Launched by hand (`schoolctl lessons launch`), not from the schedule.
    manual: bool = False

    @property
    def lesson_id(self) -> str:
        """Stable across re-imports: the school, the room and the start (UTC, minutes;
        seconds for one launched by hand, which may start any time)."""
        # "/" is in no id, so the parts cannot be read two ways.
        when = datetime.fromtimestamp(self.starts_at, UTC)
        if self.manual:
            return f"{self.school_id}/{self.room_id}/{when:%Y%m%dT%H%M%SZ}/manual"
        return f"{self.school_id}/{self.room_id}/{when:%Y%m%dT%H%MZ}"


@dataclass(frozen=True, slots=True)
class LessonEvent:
    """A panel's word on a lesson."""

    lesson_id: str
    device_id: str
    command_id: str
    kind: EventKind
    reason: FailReason | None
    message: str
    at: float


@dataclass(frozen=True, slots=True)
class LessonRecord:
    """A stored lesson, where it is, and its panels' count of each answer."""

    lesson: Lesson
    state: LessonState
    reason: str
    dispatched_at: float | None
    panels: int
    launched: int
    failed: int
