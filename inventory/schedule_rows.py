"""The rules of one schedule row, shared by every ``ScheduleSource``: ``parse_row``.

``parse_row`` turns one row's fields (CSV strings or JSON values) into a
``ScheduleRow``, or a ``RowError`` naming each field that is missing, malformed or
out of range. The rules that need the other rows, the inventory and the stored
lessons are ``inventory.schedule.check_rows``; the contract both use (the columns,
the limits, the row types) is ``inventory.schedule``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlsplit

from common.content_hosts import is_ip
from inventory.lessons import Lesson
from inventory.row_fields import (
    RowError,
    brief,
    id_field,
    json_kind,
    line_field,
    quoted,
    text_field,
)
from inventory.schedule import COLUMNS, MAX_LESSON_SECONDS, MAX_URL, OPTIONAL_COLUMNS, ScheduleRow

_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?"
)
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


def parse_row(line: int, fields: Mapping[str, object]) -> ScheduleRow | RowError:
    """Apply the rules of one row; a row's problems are joined into one message.

    Values are strings (CSV) or JSON values; strings are stripped of surrounding
    spaces. ``None`` is treated as absent. Keys not in ``COLUMNS`` are refused, so
    a misspelt column is never silently dropped.
    """
    return _row(line, fields, lambda p: (_time(fields, "start", p), _time(fields, "end", p)))


def check_row(
    line: int, fields: Mapping[str, object], starts_at: float, ends_at: float
) -> ScheduleRow | RowError:
    """``parse_row`` for a row whose times are instants already (the admin API's
    Timestamps, range-checked there): its other fields under the same rules."""
    start = (starts_at, datetime.fromtimestamp(starts_at, UTC).isoformat())
    end = (ends_at, datetime.fromtimestamp(ends_at, UTC).isoformat())
    return _row(line, {**fields, "start": start[1], "end": end[1]}, lambda _: (start, end))


_Time = tuple[float, str] | None


def _row(
    line: int, fields: Mapping[str, object], times: Callable[[list[str]], tuple[_Time, _Time]]
) -> ScheduleRow | RowError:
    problems: list[str] = []
    unknown = sorted(k for k in fields if k not in COLUMNS)
    if unknown:
        names = ", ".join(quoted(k) for k in unknown)
        problems.append(f"unknown field {names} (known: {', '.join(COLUMNS)})")
    school = id_field(fields, "school", problems)
    room = id_field(fields, "room", problems)
    start, end = times(problems)
    if start is not None and end is not None:
        _span(start, end, problems)
    class_name = _label(fields, "class", problems)
    subject = _label(fields, "subject", problems)
    teacher = _label(fields, "teacher", problems)
    url = _url(fields, problems)
    remote = _flag(fields, "remote", problems)
    if problems or start is None or end is None:
        return RowError(line, "; ".join(problems))
    lesson = Lesson(school, room, start[0], end[0], class_name, subject, teacher, url, remote)
    return ScheduleRow(line, lesson)


def lesson_by_hand(
    school: str, room: str, starts_at: float, ends_at: float, subject: str, url: str
) -> Lesson | RowError:
    """A lesson launched by hand (`schoolctl lessons launch`): the row's rules for what a
    person typed; its times are the controller's clock, never text to parse."""
    problems: list[str] = []
    fields = {"school": school, "room": room, "class": "-", "subject": subject}
    fields["content_url"] = url
    school = id_field(fields, "school", problems)
    room = id_field(fields, "room", problems)
    subject = _label(fields, "subject", problems)
    url = _url(fields, problems)
    if problems:
        return RowError(0, "; ".join(problems))
    return Lesson(school, room, starts_at, ends_at, "-", subject, "", url, False, manual=True)


# Helpers of parse_row (and inventory.row_fields'): each notes its problems and
# returns "" (or False) on one, so parse_row builds the Lesson only when none was noted.


def _time(fields: Mapping[str, object], name: str, problems: list[str]) -> tuple[float, str] | None:
    """Epoch seconds and the text as written, or None after noting why."""
    text = text_field(fields, name, problems)
    if not text:
        return None
    m = _TIME.fullmatch(text)
    if m is None:
        problems.append(
            f"{name} {quoted(text)} is not an ISO 8601 time (write it as 2026-11-24T08:30+03:00)"
        )
        return None
    year, month, day, hour, minute, sec, frac, zulu, sign, off_h, off_m = m.groups()
    if not zulu and not sign:
        # A naive time is a different instant in each zone the importer might run
        # in; the file must say which one it meant.
        problems.append(
            f"{name} {quoted(text)} has no time zone "
            f"(write it as {text}+03:00, with your offset, or Z for UTC)"
        )
        return None
    try:
        offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
        micro = int((frac or "0").ljust(6, "0"))
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(sec or 0), micro,
            tzinfo=timezone(-offset if sign == "-" else offset),
        )  # fmt: skip
        # Range-checks the instant in UTC, where lesson_id formats it.
        return moment.astimezone(UTC).timestamp(), text
    except (ValueError, OverflowError) as e:
        problems.append(f"{name} {quoted(text)} is not a valid time ({e})")
        return None


def _span(start: tuple[float, str], end: tuple[float, str], problems: list[str]) -> None:
    length = end[0] - start[0]
    if length <= 0:
        problems.append(f"end {quoted(end[1])} is not after start {quoted(start[1])}")
    elif length > MAX_LESSON_SECONDS:
        hours, rest = divmod(int(length), 3600)
        problems.append(
            f"end {quoted(end[1])} is {hours}h{rest // 60:02d}m after start {quoted(start[1])} "
            f"(a lesson is at most {MAX_LESSON_SECONDS // 3600} hours)"
        )


def _label(fields: Mapping[str, object], name: str, problems: list[str]) -> str:
    """class, subject and teacher: one line of text; only teacher may be empty."""
    return line_field(fields, name, problems, need=name not in OPTIONAL_COLUMNS)


def _url(fields: Mapping[str, object], problems: list[str]) -> str:
    """Only the scheme and form here: the http allow-list is check_rows' business."""
    url = text_field(fields, "content_url", problems)
    problem = ""
    if len(url) > MAX_URL:
        problem = f"is {len(url)} characters long, at most {MAX_URL}"
    elif any(ch.isspace() or not ch.isprintable() for ch in url):
        problem = "contains a space or a control character (percent-encode it)"
    elif url:
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme not in ("https", "http"):
                shown = scheme or "none"
                problem = f"has scheme {shown} (only https, or http for allowed hosts)"
            elif not parts.hostname:
                problem = "has no host"
            elif not is_ip(parts.hostname) and not all(
                ch.isalnum() or ch in "-._" for ch in parts.hostname
            ):
                problem = f"has an invalid host {quoted(parts.hostname)}"
            elif parts.username is not None or parts.password is not None:
                # user@host hides the real host from a reader, and a password in a
                # schedule would be shown to every class.
                problem = "carries a user name or password"
            else:
                _ = parts.port  # raises ValueError for a port out of range or not a number
        except ValueError as e:
            problem = f"is not a valid URL ({e})"
    if problem:
        problems.append(f"content_url {quoted(url)} {problem}")
    return url


def _flag(fields: Mapping[str, object], name: str, problems: list[str]) -> bool:
    """remote: true/false, yes/no or 1/0 in any case, or a JSON boolean; absent is false."""
    value = fields.get(name)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE | {""}:
        return value.strip().lower() in _TRUE
    if isinstance(value, str):
        problems.append(f"{name} {quoted(value)} is not true or false (or yes/no, 1/0)")
    elif value is not None:
        problems.append(f"{name} is {json_kind(value)} ({brief(value)}), not true or false")
    return False
