"""The school day's rule for changes: a device is changed only when no lesson is
scheduled in its room for the time the change takes, and, where its school has
maintenance windows, only inside one of them.

A window is written ``DAYS HH:MM-HH:MM`` in the controller's time zone: DAYS is
``daily`` or day names and ranges (``mon-fri``, ``sat,sun``, ``mon,wed-fri``); an end
at or before the start runs past midnight (``mon-fri 18:00-06:00`` is Monday evening
to Tuesday morning, and so on), and ``24:00`` is the end of the day.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"\s*(\S+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
# How far ahead next_start looks: every window recurs within a week.
_LOOKAHEAD_DAYS = 8


class WindowError(ValueError):
    """A maintenance window that cannot be read; the message names it."""


@dataclass(frozen=True, slots=True)
class Window:
    """One maintenance window: the weekdays it opens on (0 = Monday), and its times."""

    text: str
    days: frozenset[int]
    start: time
    # Minutes after the start's midnight; more than 24 h worth when it runs past midnight.
    length: timedelta

    def occurrence(self, day: date, zone: ZoneInfo) -> tuple[float, float] | None:
        """The window opening on ``day`` as Unix seconds, or None if it does not."""
        if day.weekday() not in self.days:
            return None
        opens = datetime.combine(day, self.start, zone)
        return opens.timestamp(), (opens + self.length).timestamp()


def _days(text: str, window: str) -> frozenset[int]:
    if text.lower() == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise WindowError(f"window {window!r}: days {text!r}: use daily or mon..sun")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        # mon-fri, and also fri-mon (wrapping past Sunday).
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def parse_window(text: str) -> Window:
    """``mon-fri 18:00-06:00`` -> Window; WindowError names what is wrong."""
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise WindowError(f"window {text!r}: write DAYS HH:MM-HH:MM, e.g. mon-fri 18:00-06:00")
    days = _days(match[1], text)
    h1, m1, h2, m2 = (int(match[i]) for i in range(2, 6))
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise WindowError(f"window {text!r}: a time is not HH:MM (00:00 to 24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    minutes = end - start if end > start else end + 24 * 60 - start
    return Window(" ".join(text.split()), days, time(h1, m1), timedelta(minutes=minutes))


def inside(windows: Sequence[Window], since: float, until: float, zone: ZoneInfo) -> bool:
    """Whether [since, until] lies within one opening of one window."""
    day = datetime.fromtimestamp(since, zone).date()
    for window in windows:
        # An opening that began yesterday may still run past midnight.
        for d in (day - timedelta(days=1), day):
            span = window.occurrence(d, zone)
            if span is not None and span[0] <= since and until <= span[1]:
                return True
    return False


def next_opening(windows: Sequence[Window], after: float, zone: ZoneInfo) -> float | None:
    """When a window next opens after ``after``; None without windows."""
    day = datetime.fromtimestamp(after, zone).date()
    starts = [
        span[0]
        for window in windows
        for i in range(_LOOKAHEAD_DAYS)
        if (span := window.occurrence(day + timedelta(days=i), zone)) is not None
        and span[0] > after
    ]
    return min(starts, default=None)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A host waiting for its wave, with what the school-day rule needs of it."""

    device_id: str
    school_id: str
    room_id: str


@dataclass(frozen=True, slots=True)
class Pick:
    """The hosts a wave may take now, and why the others wait (empty if none do)."""

    chosen: tuple[str, ...]
    waiting: str
    # When to look again for the hosts that wait (None: nothing to wait for).
    retry_at: float | None


def _clock(at: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(at, zone).strftime("%a %H:%M")


def pick_wave(
    candidates: Iterable[Candidate],
    size: int,
    busy_rooms: Mapping[tuple[str, str], float],
    windows: Mapping[str, Sequence[Window]],
    now: float,
    duration: float,
    zone: ZoneInfo,
) -> Pick:
    """Up to ``size`` hosts that are free for ``duration`` seconds from ``now``, in the
    order given: not in a room with a lesson then, and inside a maintenance window of
    their school if it has any."""
    chosen: list[str] = []
    in_lessons: list[float] = []
    outside: list[float] = []
    for c in candidates:
        if len(chosen) >= size:
            break
        free_at = busy_rooms.get((c.school_id, c.room_id)) if c.room_id else None
        if free_at is not None:
            in_lessons.append(free_at)
            continue
        school_windows = windows.get(c.school_id, ())
        if school_windows and not inside(school_windows, now, now + duration, zone):
            opens = next_opening(school_windows, now, zone)
            outside.append(opens if opens is not None else now + 86_400)
            continue
        chosen.append(c.device_id)
    parts = []
    if in_lessons:
        parts.append(
            f"{len(in_lessons)} in rooms with lessons (first free {_clock(min(in_lessons), zone)})"
        )
    if outside:
        parts.append(
            f"{len(outside)} outside their school's maintenance window "
            f"(next opens {_clock(min(outside), zone)})"
        )
    retry = min([*in_lessons, *outside], default=None)
    waiting = f"hosts wait: {', '.join(parts)}" if parts else ""
    return Pick(tuple(chosen), waiting, retry)
