"""The rules every imported row shares, whatever its file: a refused row as a value
(``RowError``), and one field read as an id or a line of text, each problem noted in
words that name the field and its value.

A row's fields are CSV strings, JSON values or YAML scalars; the helpers take them
as a mapping and append their problems to a list, so one row's problems are joined
into one message (the schedule's ``parse_row``, the inventory's ``parse_item``).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from inventory.model import valid_id

# Line breaks and surrogates too: a message or a panel title must stay one line,
# and a lone surrogate (possible through a JSON escape) cannot be stored as UTF-8.
BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
MAX_TEXT = 200
_MISSING = object()


@dataclass(frozen=True, slots=True)
class RowError:
    """A refused row: where it starts and why, in one line naming the field and value."""

    line: int
    message: str


def quoted(value: str) -> str:
    """A value quoted for a message: one line, and long ones cut."""
    return repr(value if len(value) <= 80 else value[:80] + "…")


def text_field(
    fields: Mapping[str, object], name: str, problems: list[str], need: bool = True
) -> str:
    """The field as a stripped string ("" after noting a problem); ``None`` is absent,
    and a required one must not be absent or empty."""
    value = fields.get(name, _MISSING)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if not isinstance(value, str) and value not in (_MISSING, None):
        problems.append(f"{name} is {json_kind(value)} ({brief(value)}), not a string")
    elif need:
        state = "missing" if value is _MISSING else "null" if value is None else "empty"
        problems.append(f"{name} is {state}")
    return ""


def id_field(
    fields: Mapping[str, object], name: str, problems: list[str], need: bool = True
) -> str:
    """A school, room, device or other id (``inventory.model.valid_id``)."""
    value = text_field(fields, name, problems, need)
    if value and not valid_id(value):
        problems.append(
            f"{name} {quoted(value)} is not a valid id "
            "(1-64 letters, digits and ._:-, starting with a letter or digit)"
        )
    return value


def line_field(fields: Mapping[str, object], name: str, problems: list[str], need: bool) -> str:
    """One line of text for people (a subject, a location): at most MAX_TEXT characters,
    no control characters or line breaks."""
    value = text_field(fields, name, problems, need)
    if len(value) > MAX_TEXT:
        problems.append(f"{name} is {len(value)} characters long, at most {MAX_TEXT}")
    elif any(unicodedata.category(ch) in BAD_CATEGORIES for ch in value):
        problems.append(f"{name} {quoted(value)} contains a control character or line break")
    return value


def json_kind(value: object) -> str:
    """What a decoded value is, in the words a JSON or YAML writer uses."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def brief(value: object) -> str:
    """A decoded value as JSON, on one line and cut after 40 characters."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return _one_line(text if len(text) <= 40 else text[:40] + "…")


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
