"""What every imported file of rows shares: its bytes as UTF-8 text, and a CSV table's
header and records, each record with the line it starts on.

A file that cannot be read at all (not UTF-8, empty, a bad header) is one
``FileUnreadable`` (or the subclass the caller names) before any row is looked at; a
record of the wrong shape is a ``RowError`` with its line. The schedule
(``inventory.schedule_file``) and the infrastructure inventory
(``inventory.infra_file``) read their CSV files here.
"""

from __future__ import annotations

import collections
import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.errors import SchoolFleetError
from inventory.row_fields import RowError


class FileUnreadable(SchoolFleetError):
    """A whole file cannot be read: unreadable, not UTF-8, empty, a bad header or syntax."""


# A record before its row rules: its line and its fields, or a refusal of its shape.
Item = tuple[int, Mapping[str, object]] | RowError


@dataclass(frozen=True, slots=True)
class CsvTable:
    """A CSV file's column names (as ``header`` normalised them) and its records."""

    columns: tuple[str, ...]
    header_line: int
    items: list[Item]


def decode_text(name: str, data: bytes, error: type[FileUnreadable] = FileUnreadable) -> str:
    """The file's text; raises ``error`` naming the line of a byte that is not UTF-8,
    or saying the file is empty."""
    try:
        # utf-8-sig: spreadsheet programs start "CSV UTF-8" files with a BOM.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(
            f"{name}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8"
        ) from None
    if not text.strip():
        raise error(f"{name} is empty")
    return text


def csv_table(
    name: str,
    text: str,
    columns: Sequence[str],
    required: Sequence[str],
    error: type[FileUnreadable] = FileUnreadable,
) -> CsvTable:
    """The records of a CSV text whose first non-blank row names its columns, each of
    ``columns`` (``required`` ones present); blank records are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    items: list[Item] = []
    # line_num counts physical lines read so far, so a record starts on the line
    # after the previous record ended, however many lines its quoted values span.
    ended = 0
    try:
        for cells in reader:
            line, ended = ended + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = _header(name, line, cells, columns, required, error)
                header_line = line
                continue
            # Spreadsheets pad rows with empty cells; anything else beyond the
            # header is a value that would be lost, e.g. after an unquoted comma.
            extra = cells[len(header) :]
            if len(cells) < len(header) or any(cell.strip() for cell in extra):
                items.append(
                    RowError(
                        line,
                        f"row has {len(cells)} values but the header has {len(header)} "
                        "columns (quote values that contain commas)",
                    )
                )
                continue
            items.append((line, dict(zip(header, cells, strict=False))))
    except csv.Error as e:
        raise error(f"{name}:{reader.line_num}: not valid CSV ({e})") from None
    if header is None:
        raise error(f"{name} has no header row ({','.join(columns)})")
    return CsvTable(tuple(header), header_line, items)


def _header(
    name: str,
    line: int,
    cells: list[str],
    known: Sequence[str],
    required: Sequence[str],
    error: type[FileUnreadable],
) -> list[str]:
    """The header's column names; "Content URL" and "content-url" mean content_url."""
    columns = [re.sub(r"[\s-]+", "_", cell.strip().lower()) for cell in cells]
    while columns and not columns[-1]:
        columns.pop()  # trailing empty header cells, as spreadsheets write them
    problems = []
    missing = [c for c in required if c not in columns]
    if missing:
        problems.append(f"lacks required columns {', '.join(missing)}")
    unknown = [repr(c) for c in columns if c and c not in known]
    if unknown:
        problems.append(f"has unknown columns {', '.join(unknown)}")
    twice = sorted(c for c, n in collections.Counter(columns).items() if c and n > 1)
    if twice:
        problems.append(f"names columns more than once: {', '.join(twice)}")
    nameless = [str(i) for i, c in enumerate(columns, 1) if not c]
    if nameless:
        problems.append(f"has columns without a name: {', '.join(nameless)}")
    if not problems:
        return columns
    hint = f"the first row names the columns: {','.join(known)}"
    if len(cells) == 1 and ";" in cells[0]:
        hint = "values are separated by ';', but a CSV file separates them by ','"
    raise error(f"{name}:{line}: the header {'; '.join(problems)} ({hint})")
