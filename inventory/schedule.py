"""The schedule import's contract, and the rules that need more than one row.

A ``ScheduleSource`` yields one ``ScheduleRow`` or ``RowError`` per lesson it holds;
the file importer (``inventory.schedule_file``) is the first, the education
platform's API can be the next without the dispatcher noticing. This module holds
that contract (the columns, the limits, the row and error types; ``RowError`` is
every import's, from ``inventory.row_fields``) and ``check_rows``,
the rules that need the other rows, the inventory and the lessons already stored.
The rules of one row, which every source shares, are ``parse_row`` in
``inventory.schedule_rows``. Both are pure: a bad row is a value with its line
number and reason, never an exception.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from common.content_hosts import host_allowed
from inventory.lessons import Lesson
from inventory.row_fields import RowError, quoted
from inventory.row_files import FileUnreadable

# In the order a CSV header would list them; ``class`` becomes Lesson.class_name.
COLUMNS = ("school", "room", "start", "end", "class", "subject", "teacher", "content_url", "remote")
# A lesson may have no named teacher (a substitute is not known yet), and most
# lessons are not remote: both default rather than force a column on every file.
OPTIONAL_COLUMNS = frozenset({"teacher", "remote"})
REQUIRED_COLUMNS = tuple(c for c in COLUMNS if c not in OPTIONAL_COLUMNS)

MAX_LESSON_SECONDS = 12 * 3600
MAX_URL = 2048


class ScheduleError(FileUnreadable):
    """A whole schedule cannot be read: unreadable, not UTF-8, a bad header or JSON."""


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A lesson that passed the row rules, and the 1-based line its row starts on."""

    line: int
    lesson: Lesson


class ScheduleSource(Protocol):
    """Where lessons come from: a file now, the education platform's API later."""

    @property
    def name(self) -> str:
        """What to call the source in messages, e.g. the file's path."""
        ...

    def rows(self) -> Iterator[ScheduleRow | RowError]:
        """Every row, in the source's order, each parsed or refused."""
        ...


def check_rows(
    rows: Iterable[ScheduleRow | RowError],
    known_rooms: Callable[[str, str], bool] | AbstractSet[tuple[str, str]],
    allowed_hosts: AbstractSet[str],
    stored: Iterable[Lesson],
) -> tuple[list[ScheduleRow], list[RowError]]:
    """Apply the rules that need context; return the rows that pass and the errors.

    ``rows`` may hold a source's RowErrors: they are passed through, so the errors
    come back in the source's order. ``stored`` is the lessons already kept for the
    rooms concerned (passing more is harmless). A row is refused when:

    - its (school, room) is not in ``known_rooms``;
    - its content URL is http and its host is not on ``allowed_hosts`` (equal to an
      entry, or a subdomain of one). https is accepted for any host: the issue
      refuses "a scheme other than https", the allow-list is the exception for
      hosts without TLS, and the agent applies its own list to every URL it opens
      (a refusal there is ``FailReason.URL_REFUSED``). Restricting https with a
      list meant for http would refuse the platform's own content;
    - an earlier row of the file is the same lesson (school, room and start minute,
      as in its ``lesson_id``): refused naming the first one's line;
    - otherwise, it overlaps an earlier row of the same room in the file (lessons
      are half-open: one may start the minute another ends): refused naming the
      earliest such line. Earlier rows count even if refused for another reason:
      the file contradicts itself, and both lines need a look;
    - it overlaps a stored lesson of the room, other than the one it updates (same
      lesson id), or one that another accepted row of the file updates: a file that
      shortens one lesson and adds another in the freed time is accepted whole.

    Rows that pass keep the file's order. Stored with their updates applied, no
    two lessons of a room overlap (if none did before), and checking the same rows
    again against that store accepts the same rows: re-importing changes nothing.
    """
    has_room = (
        (lambda school, room: (school, room) in known_rooms)
        if isinstance(known_rooms, AbstractSet)
        else known_rooms
    )
    hosts = frozenset(allowed_hosts)
    items = list(rows)
    parsed = [row for row in items if isinstance(row, ScheduleRow)]
    in_file: dict[tuple[str, str], _Intervals[int]] = {}
    first_line: dict[str, int] = {}
    own: list[list[str]] = []
    for n, row in enumerate(parsed):
        lesson = row.lesson
        school, room = lesson.school_id, lesson.room_id
        problems: list[str] = []
        own.append(problems)
        if not has_room(school, room):
            problems.append(f"room {room} of school {school} is not in the inventory")
        if _http_refused(lesson.content_url, hosts):
            host = urlsplit(lesson.content_url).hostname
            problems.append(
                f"content_url {quoted(lesson.content_url)} uses http, allowed only for hosts "
                f"on the allow-list ({host} is not on it; use https)"
            )
        # lesson_id names the school, the room and the start unambiguously ("/" is in
        # no id), and the store keeps a lesson under it: the same id, the same lesson.
        key = lesson.lesson_id
        earlier = in_file.setdefault((school, room), _Intervals())
        if key in first_line:
            problems.append(
                f"same lesson as line {first_line[key]} "
                f"(room {room} of school {school}, starting the same minute)"
            )
        else:
            first_line[key] = row.line
            others = earlier.overlapping(lesson.starts_at, lesson.ends_at)
            if others:
                line = min(parsed[i].line for i in others)
                problems.append(f"overlaps line {line} in room {room} of school {school}")
        earlier.add(lesson.starts_at, lesson.ends_at, n)
    clashes = iter(_stored_clashes(parsed, [not p for p in own], in_file, stored))
    problems_of = iter(own)
    good: list[ScheduleRow] = []
    bad: list[RowError] = []
    for item in items:
        if isinstance(item, RowError):
            bad.append(item)
            continue
        problems, clash = next(problems_of), next(clashes)
        if clash is not None:
            problems.append(
                f"overlaps the stored lesson {quoted(f'{clash.class_name} {clash.subject}')} "
                f"from {_utc(clash.starts_at)} to {_utc(clash.ends_at)} "
                f"in room {clash.room_id} of school {clash.school_id}"
            )
        if problems:
            bad.append(RowError(item.line, "; ".join(problems)))
        else:
            good.append(item)
    return good, bad


def _stored_clashes(
    parsed: list[ScheduleRow],
    ok: list[bool],
    in_file: Mapping[tuple[str, str], _Intervals[int]],
    stored: Iterable[Lesson],
) -> list[Lesson | None]:
    """For each row, the earliest stored lesson it overlaps, if any, once updates apply.

    A stored lesson is replaced when a row with its id passes, and that depends on
    the stored lessons the row overlaps. Starting from "every row that passes the
    other rules replaces its lesson", each row a clash refuses puts its stored
    lesson back, which may refuse more rows: the largest consistent set remains.
    """
    versions: dict[str, list[Lesson]] = {}
    for lesson in stored:
        versions.setdefault(lesson.lesson_id, []).append(lesson)
    keys = [row.lesson.lesson_id for row in parsed]
    replaced = {key for key, passes in zip(keys, ok, strict=True) if passes}
    kept: dict[tuple[str, str], _Intervals[Lesson]] = {}
    for lesson in (s for key, same in versions.items() if key not in replaced for s in same):
        room = kept.setdefault((lesson.school_id, lesson.room_id), _Intervals())
        room.add(lesson.starts_at, lesson.ends_at, lesson)
    clash: list[Lesson | None] = []
    for row, key in zip(parsed, keys, strict=True):
        room = kept.get((row.lesson.school_id, row.lesson.room_id), _Intervals())
        found = room.overlapping(row.lesson.starts_at, row.lesson.ends_at)
        clash.append(min((s for s in found if s.lesson_id != key), key=_order, default=None))
    refused = [n for n, c in enumerate(clash) if ok[n] and c is not None]
    while refused:
        key = keys[refused.pop()]
        replaced.discard(key)
        for lesson in versions.get(key, ()):
            rows = in_file.get((lesson.school_id, lesson.room_id), _Intervals())
            for n in rows.overlapping(lesson.starts_at, lesson.ends_at):
                current = clash[n]
                if keys[n] == key or (current is not None and _order(current) <= _order(lesson)):
                    continue
                clash[n] = lesson
                if ok[n] and current is None:
                    refused.append(n)
    return clash


def _order(lesson: Lesson) -> tuple[float, float, str]:
    return (lesson.starts_at, lesson.ends_at, lesson.lesson_id)


_T = TypeVar("_T")


@dataclass(slots=True)
class _Intervals(Generic[_T]):
    """Half-open intervals of one room, sorted by start, for overlap queries.

    Lessons are short (at most 12 hours by ``schedule_rows.parse_row``, and whatever
    the store holds is tracked in ``longest``), so only starts within that distance
    can overlap: a room's year of lessons is not compared pairwise.
    """

    starts: list[float] = field(default_factory=list)
    items: list[tuple[float, float, _T]] = field(default_factory=list)
    longest: float = 0.0

    def add(self, start: float, end: float, tag: _T) -> None:
        at = bisect.bisect_right(self.starts, start)
        self.starts.insert(at, start)
        self.items.insert(at, (start, end, tag))
        self.longest = max(self.longest, end - start)

    def overlapping(self, start: float, end: float) -> list[_T]:
        lo = bisect.bisect_right(self.starts, start - self.longest)
        hi = bisect.bisect_left(self.starts, end)
        return [tag for s, e, tag in self.items[lo:hi] if s < end and e > start]


def _http_refused(url: str, hosts: frozenset[str]) -> bool:
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and not host_allowed(parts.hostname or "", hosts)


def _utc(at: float) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ" if moment.second else "%Y-%m-%dT%H:%MZ")
