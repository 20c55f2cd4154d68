"""What schoolctl's imports (lessons, inventory) share: the report of what the file and
the controller said (the client sends the rows in parts, cli/client/parts.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cli.client.values import ImportAnswer
from cli.options import err, out, print_json


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

    def add(self, answer: ImportAnswer) -> None:
        for key in self.totals:
            self.totals[key] += answer.counts[key]
        self.errors += answer.refused

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
