"""Numbers and times in a request that the controller cannot hold or that are no time.

One pass over any request message, driven by its descriptor, so that a field added
later is checked too: a 64-bit integer beyond what SQLite holds (signed 64 bits), a
Timestamp outside the years 1 to 9999, a floating-point value that is not finite.
Each handler still checks what its fields mean (a page size, a count of minutes).
"""

from __future__ import annotations

import math

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The years 1 to 9999: what a Timestamp may hold, and what datetime can stand for.
TIME_MIN, TIME_MAX = -62_135_596_800, 253_402_300_799
_TIMESTAMP = "google.protobuf.Timestamp"
_WIDE = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})
_REAL = frozenset({FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT})


def time_problem(seconds: int, nanos: int, name: str) -> str | None:
    """Why a Timestamp's ``seconds`` and ``nanos`` are no time, or None."""
    if TIME_MIN <= seconds <= TIME_MAX and 0 <= nanos < 1_000_000_000:
        return None
    return f"{name} ({seconds}s, {nanos}ns) is not a valid time (years 1 to 9999)"


def out_of_range(message: Message) -> str | None:
    """The first field of ``message`` (at any depth) out of range, in one line that
    names it; None if there is none.

    Rows of an import (repeated messages with a ``line``) are left to the import,
    which refuses a bad row by its line and goes on with the others.
    """
    for field, value in message.ListFields():
        name = f"{message.DESCRIPTOR.name}.{field.name}"
        values = value if field.is_repeated else [value]
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue  # no request has a map of numbers; strings need no range
            if field.is_repeated and "line" in field.message_type.fields_by_name:
                continue
            for item in values:
                why = _message_problem(item, name)
                if why is not None:
                    return why
            continue
        for item in values:
            why = _scalar_problem(field, item, name)
            if why is not None:
                return why
    return None


def _message_problem(item: Message, name: str) -> str | None:
    if item.DESCRIPTOR.full_name == _TIMESTAMP:
        return time_problem(item.seconds, item.nanos, name)  # type: ignore[attr-defined]
    return out_of_range(item)


def _scalar_problem(field: FieldDescriptor, value: object, name: str) -> str | None:
    if field.cpp_type in _WIDE and isinstance(value, int) and value > INT64_MAX:
        return f"{name} {value} is out of range (at most {INT64_MAX})"
    if field.cpp_type in _REAL and isinstance(value, float) and not math.isfinite(value):
        return f"{name} {value} is not a finite number"
    return None
