"""What schoolctl's imports (lessons, inventory) share: rows sent in parts, each well
under the controller's request limit, and the report of what the controller said."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from cli.options import err, out, print_json
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


@dataclass
class ImportReport:
    """The counts and refused rows of one file's import, summed over its parts."""

    path: Path
    rows: int
    dry_run: bool
    # What the answers count, in the order the summary names them, e.g. "added".
    totals: dict[str, int]
    # (line, why), from the file's reading and from the controller.
    errors: list[tuple[int, str]] = field(default_factory=list)

    def add(self, answer: Answer) -> None:
        for key in self.totals:
            self.totals[key] += getattr(answer, key)
        self.errors += [(e.line, e.message) for e in answer.errors]

    def show(self, as_json: bool, labels: Mapping[str, str] | None = None) -> None:
        """JSON on stdout; or each refused row on stderr, by line, and a summary.
        ``labels`` names a count in the summary when its key does not read well."""
        self.errors.sort()
        if as_json:
            print_json(
                {
                    "file": str(self.path),
                    "rows": self.rows,
                    "dry_run": self.dry_run,
                    **self.totals,
                    "refused": [{"line": line, "message": m} for line, m in self.errors],
                }
            )
            return
        for line, message in self.errors:
            err.print(f"{self.path}:{line}: {message}", markup=False)
        names = labels or {}
        counts = ", ".join(f"{n} {names.get(key, key)}" for key, n in self.totals.items())
        verb = "checked" if self.dry_run else "imported"
        out.print(
            f"{self.path}: {verb} {self.rows} rows: {counts}, {len(self.errors)} refused",
            markup=False,
        )
