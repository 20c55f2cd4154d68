"""The infrastructure inventory file: schools, rooms, access points and servers, as CSV
or YAML, for ``schoolctl inventory import``.

CSV is one table with a ``type`` column (school, room, ap, server) and the union of
the kinds' columns (``inventory.infra_rows.COLUMNS``); a cell that does not apply
to a row's type stays empty. YAML is a mapping of sections, each a list of
mappings with the same field names::

    schools: [{id: "1234", name: School 1234}]
    rooms: [{id: r101, school: "1234"}]
    access_points:
      - {id: ap-1, school: "1234", room: r101, address: 10.1.0.11, bssids: [...]}
    servers: [{id: srv-1234, school: "1234", address: 10.1.0.2, ssh_user: admin}]

YAML scalars are taken as the text they are written as (``1234`` and ``0123`` are
the ids they look like, ``22`` a port), never as YAML 1.1 numbers or dates. A file
that cannot be read at all is one ``InventoryFileError``; a bad row is a
``RowError`` with the line it starts on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from inventory.infra_rows import (
    A_ROW,
    COLUMNS,
    NEEDED,
    REQUIRED_COLUMNS,
    SECTIONS,
    InventoryRow,
    ItemKind,
    parse_item,
)
from inventory.row_fields import RowError, quoted
from inventory.row_files import FileUnreadable, csv_table, decode_text

Format = Literal["csv", "yaml"]
_SUFFIXES: Mapping[str, Format] = {".csv": "csv", ".yaml": "yaml", ".yml": "yaml"}
_NULL = "tag:yaml.org,2002:null"
_EXPECTED = "a mapping of sections: schools, rooms, access_points, servers"
# libyaml's parser when PyYAML was built with it: a city's file has 70,000 rows.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class InventoryFileError(FileUnreadable):
    """A whole inventory file cannot be read: unreadable, not UTF-8, a bad CSV header,
    or YAML that is not a mapping of the known sections."""


# A row before parse_item: its line, its kind (the CSV type) and its fields.
_Entry = tuple[int, str, Mapping[str, object]] | RowError


@dataclass(frozen=True, slots=True)
class InventoryFile:
    """A read inventory file: its rows' fields, parsed each time ``rows`` is called."""

    name: str
    entries: tuple[_Entry, ...]

    def rows(self) -> Iterator[InventoryRow | RowError]:
        """Every row in file order, each parsed or refused."""
        for entry in self.entries:
            yield entry if isinstance(entry, RowError) else parse_item(*entry)


def open_inventory(path: Path) -> InventoryFile:
    """Read a .csv, .yaml or .yml inventory; raises InventoryFileError if it cannot be
    read as one."""
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        shown = repr(path.suffix) if path.suffix else "no extension"
        raise InventoryFileError(f"{path}: an inventory is a .csv or .yaml file, not {shown}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InventoryFileError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_inventory(str(path), data, fmt)


def parse_inventory(name: str, data: bytes, fmt: Format) -> InventoryFile:
    """An inventory from a file's bytes; ``name`` is what messages call it."""
    text = decode_text(name, data, InventoryFileError)
    entries = _csv_entries(name, text) if fmt == "csv" else _yaml_entries(name, text)
    return InventoryFile(name, tuple(entries))


def _csv_entries(name: str, text: str) -> list[_Entry]:
    table = csv_table(name, text, COLUMNS, REQUIRED_COLUMNS, InventoryFileError)
    entries: list[_Entry] = []
    lacking: dict[str, set[str]] = {}
    for item in table.items:
        if isinstance(item, RowError):
            entries.append(item)
            continue
        line, fields = item
        kind = str(fields.get("type", ""))
        entries.append((line, kind, {k: v for k, v in fields.items() if k != "type"}))
        try:
            needed = NEEDED[ItemKind(kind.strip().lower())]
        except ValueError:
            continue  # parse_item names the type
        for column in needed:
            if column not in table.columns:
                lacking.setdefault(column, set()).add(kind.strip().lower())
    if lacking:
        # Every row of the kind would be refused for the same reason: the file is.
        shown = "; ".join(
            f"{c} ({' and '.join(sorted(k))} rows need it)" for c, k in lacking.items()
        )
        raise InventoryFileError(
            f"{name}:{table.header_line}: the header lacks columns {shown} "
            f"(the first row names the columns: {','.join(COLUMNS)})"
        )
    return entries


def _yaml_entries(name: str, text: str) -> list[_Entry]:
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise InventoryFileError(f"{name}{where}: not valid YAML ({e.problem or e})") from None
    except yaml.YAMLError as e:
        raise InventoryFileError(f"{name}: not valid YAML ({e})") from None
    except RecursionError:
        raise InventoryFileError(f"{name}: not valid YAML (nested too deeply)") from None
    if not isinstance(root, yaml.MappingNode):
        raise InventoryFileError(f"{name}: expected {_EXPECTED}, not {_node_kind(root)}")
    entries: list[_Entry] = []
    sections: set[str] = set()
    seen: set[int] = set()
    for key, value in root.value:
        section = key.value if isinstance(key, yaml.ScalarNode) else ""
        where = f"{name}:{key.start_mark.line + 1}"
        if section not in SECTIONS:
            raise InventoryFileError(
                f"{where}: unknown section {quoted(section or _node_kind(key))} "
                f"(expected {_EXPECTED})"
            )
        if section in sections:
            raise InventoryFileError(f"{where}: section {section} is given twice")
        sections.add(section)
        if isinstance(value, yaml.ScalarNode) and value.tag == _NULL:
            continue  # "servers:" with nothing under it
        if not isinstance(value, yaml.SequenceNode):
            raise InventoryFileError(
                f"{where}: section {section} must be a list, not {_node_kind(value)}"
            )
        kind = SECTIONS[section]
        entries += (_yaml_entry(node, kind, seen) for node in value.value)
    entries.sort(key=lambda e: e.line if isinstance(e, RowError) else e[0])
    return entries


class _AliasUsed(Exception):
    """A YAML alias (``*name``) repeats a list or mapping."""


def _yaml_entry(node: yaml.Node, kind: ItemKind, seen: set[int]) -> _Entry:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        return RowError(line, f"expected {A_ROW[kind]} as a mapping, not {_node_kind(node)}")
    fields: dict[str, object] = {}
    try:
        for key, value in _pairs(node, seen):
            if not isinstance(key, yaml.ScalarNode):
                return RowError(line, f"a field's name is {_node_kind(key)}, not text")
            if key.value in fields:
                return RowError(line, f"field {key.value} given more than once")
            fields[key.value] = _value(value, seen)
    except _AliasUsed:
        # Aliases of lists and mappings can grow a small file into gigabytes.
        return RowError(line, "a YAML alias (*name) repeats a list or mapping; write it out")
    return (line, kind.value, fields)


def _pairs(node: yaml.MappingNode, seen: set[int]) -> list[tuple[yaml.Node, yaml.Node]]:
    if id(node) in seen:
        raise _AliasUsed
    seen.add(id(node))
    return list(node.value)


def _value(node: yaml.Node, seen: set[int]) -> object:
    """A scalar as the text it was written as (None for null), lists and mappings as
    lists and dicts of those."""
    if isinstance(node, yaml.ScalarNode):
        return None if node.tag == _NULL else str(node.value)
    if isinstance(node, yaml.MappingNode):
        return {str(k.value): _value(v, seen) for k, v in _pairs(node, seen)}
    if id(node) in seen:
        raise _AliasUsed
    seen.add(id(node))
    return [_value(n, seen) for n in node.value]


def _node_kind(node: yaml.Node | None) -> str:
    if node is None:
        return "an empty document"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the value {quoted(str(node.value))}"
