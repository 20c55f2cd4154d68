"""The lesson values the launcher takes and gives: what to show, and what came of it.

The link turns LaunchLesson into a ``LessonLaunch`` and a ``LessonEvent`` into the
wire's LessonEvent (agent/link_messages.py); the launcher knows neither message. Kinds
and reasons are the domain's (inventory/lessons.py), the words the controller stores.
"""

from __future__ import annotations

from dataclasses import dataclass

from inventory.lessons import EventKind, FailReason


@dataclass(frozen=True, slots=True)
class LessonLaunch:
    """A lesson to show on the kiosk program: its content, from its start to its end
    (Unix seconds, the controller's times)."""

    lesson_id: str
    url: str
    starts_at: float
    ends_at: float


@dataclass(frozen=True, slots=True)
class LessonEvent:
    """What happened to a lesson on this device. The device's own id is not in it: the
    stream it goes on says whose it is."""

    lesson_id: str
    # The LaunchLesson command this answers.
    command_id: str
    kind: EventKind
    # Only for FAILED: a launch that worked has none to give. Never NOT_REACHED,
    # which is the controller's own.
    reason: FailReason | None
    # For people, e.g. the program's exit status.
    message: str
    at: float
