"""The first ScheduleSource: a CSV or JSON file exported from a school's timetable.

The file is read and its structure checked when it is opened, so a file that cannot
be read at all (not UTF-8, a bad header, broken JSON) is one ``ScheduleError``
before any row is looked at; a bad row is a ``RowError`` with the line it starts on.
"""

from __future__ import annotations

import bisect
import collections
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inventory.row_fields import RowError
from inventory.row_files import Item, csv_table, decode_text
from inventory.schedule import (
    COLUMNS,
    REQUIRED_COLUMNS,
    ScheduleError,
    ScheduleRow,
    ScheduleSource,
)
from inventory.schedule_rows import parse_row

Format = Literal["csv", "json"]
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
# What an editor counts as a line break; JSON allows them only between values.
_LINE_BREAK = re.compile(r"\r\n?|\n")


def open_schedule(path: Path) -> ScheduleSource:
    """Read a .csv or .json schedule; raises ScheduleError if it cannot be read as one."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        shown = repr(suffix) if suffix else "no extension"
        raise ScheduleError(f"{path}: a schedule is a .csv or .json file, not {shown}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ScheduleError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_schedule(str(path), data, "csv" if suffix == ".csv" else "json")


def parse_schedule(name: str, data: bytes, fmt: Format) -> ScheduleSource:
    """A schedule from a file's bytes; ``name`` is what messages call it."""
    text = decode_text(name, data, ScheduleError)
    if fmt == "csv":
        items = csv_table(name, text, COLUMNS, REQUIRED_COLUMNS, ScheduleError).items
    else:
        items = _json_items(name, text)
    return FileSchedule(name, tuple(items))


@dataclass(frozen=True, slots=True)
class FileSchedule:
    """A read schedule file: its rows' fields, parsed each time ``rows`` is called."""

    name: str
    items: tuple[Item, ...]

    def rows(self) -> Iterator[ScheduleRow | RowError]:
        """Every row in file order, each parsed or refused."""
        for item in self.items:
            yield item if isinstance(item, RowError) else parse_row(*item)


class _JsonObject(dict[str, object]):
    """A decoded JSON object that remembers the keys it was given more than once."""

    duplicates: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, object]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) < len(pairs):
        counts = collections.Counter(key for key, _ in pairs)
        obj.duplicates = tuple(sorted(key for key, n in counts.items() if n > 1))
    return obj


def _json_items(name: str, text: str) -> list[Item]:
    try:
        doc = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as e:
        raise ScheduleError(f"{name}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        # An integer too long to convert, or arrays nested past Python's stack.
        raise ScheduleError(f"{name}: not a JSON schedule ({e or 'nested too deeply'})") from None
    expected = 'a list of lessons, or {"lessons": [...]}'
    if isinstance(doc, _JsonObject):
        keys = set(doc) | set(doc.duplicates)
        if keys != {"lessons"} or doc.duplicates or not isinstance(doc["lessons"], list):
            shown = ", ".join(repr(k) for k in sorted(keys)) or "none"
            raise ScheduleError(f"{name}: expected {expected}; the object's keys are {shown}")
        lessons: list[object] = doc["lessons"]
        at = _lessons_value(text)
    elif isinstance(doc, list):
        lessons = doc
        at = _space(text, 0)
    else:
        raise ScheduleError(f"{name}: expected {expected}, not {json.dumps(doc)[:40]}")
    starts = [0, *(m.end() for m in _LINE_BREAK.finditer(text))]
    items: list[Item] = []
    for offset, value in zip(_element_offsets(text, at), lessons, strict=True):
        line = bisect.bisect_right(starts, offset)
        if not isinstance(value, _JsonObject):
            items.append(RowError(line, f"expected a lesson object, not {json.dumps(value)[:40]}"))
        elif value.duplicates:
            twice = ", ".join(value.duplicates)
            items.append(RowError(line, f"field {twice} given more than once in one lesson"))
        else:
            items.append((line, value))
    return items


# JSON has no positions: the text is valid by now, so a small walk over its
# top-level array finds where each element starts (raw_decode skips one value).
_DECODER = json.JSONDecoder()


def _space(text: str, pos: int) -> int:
    m = _JSON_SPACE.match(text, pos)
    assert m is not None  # "*" matches the empty string
    return m.end()


def _lessons_value(text: str) -> int:
    """Where the value of {"lessons": ...} starts; the object has that one key."""
    _, pos = _DECODER.raw_decode(text, _space(text, _space(text, 0) + 1))
    return _space(text, _space(text, pos) + 1)


def _element_offsets(text: str, at: int) -> Iterator[int]:
    """Where each element of the array that starts at ``at`` starts."""
    pos = _space(text, at + 1)
    while text[pos] != "]":
        yield pos
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _space(text, pos)
        if text[pos] == ",":
            pos = _space(text, pos + 1)
