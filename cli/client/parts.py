"""Import rows sent in parts, each well under the controller's request limit, and the
answers summed into one ImportAnswer (what `schoolctl lessons import` and `schoolctl
inventory import` share)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from cli.client.values import ImportAnswer
from protos.schoolfleet.v1 import admin_pb2

# Rows per request: well under the controller's request limit (1 MiB by default).
PART_BYTES = 512 * 1024
M = TypeVar("M", bound=Message)


def in_parts(groups: Iterable[Sequence[M]], limit: int = PART_BYTES) -> list[list[M]]:
    """The messages in parts of at most ``limit`` bytes, in order; a group (a school's
    rows, say) stays in one part unless it alone is larger than a part."""
    parts: list[list[M]] = [[]]
    size = 0
    for group in groups:
        sizes = [m.ByteSize() + 8 for m in group]
        if parts[-1] and size + sum(sizes) > limit:
            parts.append([])
            size = 0
        for message, message_size in zip(group, sizes, strict=True):
            if parts[-1] and size + message_size > limit:
                parts.append([])
                size = 0
            parts[-1].append(message)
            size += message_size
    return parts


class Answer(Protocol):
    """An import's answer: counts (added, updated, ...) and the rows it refused."""

    @property
    def errors(self) -> Sequence[admin_pb2.RowError]: ...


def send_in_parts(
    groups: Iterable[Sequence[M]], send: Callable[[list[M]], Answer], counts: Sequence[str]
) -> ImportAnswer:
    """Sends the rows part by part; the answers' ``counts`` summed, and every refused row."""
    totals = dict.fromkeys(counts, 0)
    refused: list[tuple[int, str]] = []
    for part in in_parts(groups):
        answer = send(part)
        for key in totals:
            totals[key] += getattr(answer, key)
        refused += [(e.line, e.message) for e in answer.errors]
    return ImportAnswer(totals, refused)
