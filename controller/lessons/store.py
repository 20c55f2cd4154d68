"""What the controller needs from a store for lessons: the schedule, the outbox of
commands to panels, and what the panels said."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from inventory.lessons import Lesson, LessonRecord, LessonState

Room = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ImportCounts:
    added: int
    updated: int
    unchanged: int
    # Rows for lessons already dispatched or over: kept as they were.
    locked: int


@dataclass(frozen=True, slots=True)
class OutboxCommand:
    """A command for one device, kept until the device answers it or it expires."""

    command_id: str
    device_id: str
    lesson_id: str
    command: bytes
    expires_at: float


@dataclass(frozen=True, slots=True)
class PanelResult:
    """What one panel of a dispatched lesson said."""

    device_id: str
    launched_at: float | None
    failed_reason: str | None


@dataclass(frozen=True, slots=True)
class LessonQuery:
    """Lessons starting in [since, until); None matches everything."""

    since: float
    until: float
    school_id: str | None = None
    room_id: str | None = None
    schools: frozenset[str] | None = None
    limit: int = 10_000


class LessonStore(Protocol):
    """The schedule and its dispatch, in the store."""

    def known_rooms(self, rooms: Iterable[Room]) -> set[Room]:
        """Those of ``rooms`` the inventory knows (a device reported it, or it was added)."""

    def add_room(self, school_id: str, room_id: str) -> None:
        """Adds a room to the inventory (again is a no-op)."""

    def lessons_in_rooms(
        self, rooms: Iterable[Room], since: float, until: float
    ) -> dict[Room, list[Lesson]]:
        """Stored lessons of these rooms that overlap [since, until)."""

    def save_lessons(self, lessons: Sequence[Lesson], now: float) -> ImportCounts:
        """Adds new lessons and updates scheduled ones, in one transaction."""

    def due_lessons(self, until: float, now: float) -> list[Lesson]:
        """Scheduled lessons starting before ``until`` that have not ended at ``now``."""

    def missed_lessons(self, now: float) -> list[Lesson]:
        """Scheduled lessons that ended at ``now`` without being dispatched."""

    def panels_in_rooms(self, rooms: Iterable[Room]) -> dict[Room, list[str]]:
        """The ids of each room's panels that are not decommissioned."""

    def dispatch(
        self, lessons: Sequence[tuple[str, Sequence[OutboxCommand]]], now: float
    ) -> list[str]:
        """In one transaction, for each lesson still scheduled: puts its commands in the
        outbox and marks it dispatched (no-device without commands). Returns the ids of
        the lessons it dispatched; others were dispatched already and are left alone."""

    def next_wake(self, lead: float, settle: float) -> float | None:
        """The earliest time something is due: a scheduled lesson's start minus
        ``lead``, a dispatched one's end, or its end plus ``settle``."""

    def pending_commands(self, device_id: str, now: float) -> list[bytes]:
        """The device's commands that have not expired, oldest first."""

    def pending_commands_of(
        self, device_ids: Collection[str], now: float
    ) -> dict[str, list[bytes]]:
        """pending_commands of each of these devices in one read (those with none are
        absent): what a controller sends its streams again after a lost relay."""

    def lessons_ending(self, now: float) -> list[tuple[Lesson, list[str]]]:
        """Dispatched lessons past their end whose EndLesson was not sent, with the
        panels to send it to; marks them ended."""

    def lessons_to_settle(self, before: float) -> list[tuple[Lesson, list[PanelResult]]]:
        """Dispatched lessons that ended before ``before``, with their panels' results."""

    def settle(self, lesson_id: str, state: LessonState, reason: str, now: float) -> None:
        """Records a lesson's outcome."""

    def list_lessons(self, query: LessonQuery) -> list[LessonRecord]:
        """Lessons matching ``query``, by start, then room."""


class LessonCounts(Protocol):
    """Today's lessons counted per school, for /metrics (read at scrape)."""

    def lesson_counts(self, since: float, until: float) -> list[tuple[str, LessonState, int]]:
        """Lessons starting in [since, until) per school and state."""

    def lessons_under_way(
        self, since: float, until: float, due_before: float
    ) -> list[tuple[str, str, int]]:
        """Dispatched lessons starting in [since, until) per school and whether a panel
        shows them: showing (one launched), not-showing (none, and the lesson started
        before ``due_before``), starting (none yet, not due)."""

    def lesson_panel_counts(
        self, since: float, until: float, due_before: float
    ) -> list[tuple[str, str, int]]:
        """The panels of lessons starting in [since, until) per school and result:
        launched, the reason the panel gave for failing, not-reached (silent, and the
        lesson started before ``due_before``) or pending."""

    def lesson_day_spans(self, since: float, until: float) -> list[tuple[str, float, float]]:
        """Per school with lessons starting in [since, until): the first one's start and
        the latest end."""
