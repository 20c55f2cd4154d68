"""The variables a playbook takes from a rollout, and the check of a rollout's extra
vars against them.

Each playbook may have a schema beside it, ``NAME.vars.yml`` for ``NAME.yml``: per
variable its type, allowed values or pattern, bounds, and whether school-it may set it
(otherwise only central-ops may). A playbook without one takes no extra vars. Extra vars
beat every other variable in Ansible, ``ansible_host`` and the connection's included,
so no ``ansible_*`` name and none of Ansible's magic variables is ever taken, whatever
a schema says.

Pure: text in, values or RolloutRefused (one line naming the variable) out; only
:func:`read_schema` reads a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.errors import RolloutRefused

# Every value nests at most this deep (a list of dicts of lists is 3).
DEPTH_MAX = 4
# The request's JSON text, all variables together.
TEXT_MAX = 64 * 1024
_STR_MAX = 1024
_ITEMS_MAX = 64
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# Variables Ansible defines itself, and names its templates call: set from outside, each
# would change what a play does or where it connects. ``ansible_*`` is refused whole.
MAGIC = frozenset(
    {
        "environment",
        "group_names",
        "groups",
        "hostvars",
        "inventory_dir",
        "inventory_file",
        "inventory_hostname",
        "inventory_hostname_short",
        "item",
        "lookup",
        "now",
        "omit",
        "play_hosts",
        "playbook_dir",
        "q",
        "query",
        "role_name",
        "role_names",
        "role_path",
        "undef",
        "vars",
    }
)
_TYPES = frozenset({"str", "int", "bool", "list", "dict"})
_SPEC_KEYS = frozenset(
    {"type", "choices", "pattern", "min", "max", "items", "values", "school_it", "about"}
)
# JSON's tokens that matter for nesting: strings (skipped whole), brackets, separators.
# (The string's loop unrolled: a 1 MiB string is read in ~1 ms, not ~200.)
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)


def reserved(name: str) -> bool:
    """True for names no rollout may set: Ansible's own, and internal (``_x``) ones."""
    low = name.lower()
    return low.startswith(("ansible_", "_")) or low in MAGIC


@dataclass(frozen=True, slots=True)
class VarSpec:
    """What one variable (or a list's item, or a dict's value) may hold."""

    types: tuple[str, ...]
    choices: tuple[object, ...] = ()
    pattern: re.Pattern[str] | None = None
    low: int | None = None
    high: int | None = None
    items: VarSpec | None = None
    values: VarSpec | None = None
    school_it: bool = False
    about: str = ""

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        kinds = " or ".join(_WORDS[t] for t in self.types)
        if self.pattern is not None:
            kinds += f" matching {self.pattern.pattern}"
        return kinds


_WORDS = {"str": "text", "int": "a whole number", "bool": "true or false", "list": "a list"}
_WORDS["dict"] = "a mapping"


@dataclass(frozen=True, slots=True)
class PlaybookVars:
    """A playbook's variables by name; empty: it takes none."""

    playbook: str
    specs: Mapping[str, VarSpec]

    def names(self, central: bool) -> list[str]:
        return sorted(n for n, s in self.specs.items() if central or s.school_it)


def schema_path(playbooks_dir: Path, playbook: str) -> Path:
    """``timesync.yml`` -> ``timesync.vars.yml`` in the same folder."""
    return playbooks_dir / (playbook.rsplit(".", 1)[0] + ".vars.yml")


def read_schema(playbooks_dir: Path, playbook: str) -> PlaybookVars:
    """The schema beside ``playbook`` (a checked name in ``playbooks_dir``); none there:
    the playbook takes no extra vars."""
    path = schema_path(playbooks_dir, playbook)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PlaybookVars(playbook, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise RolloutRefused(f"{path.name} cannot be read: {exc}") from None
    return parse_schema(text, playbook, path.name)


def parse_schema(text: str, playbook: str, source: str = "") -> PlaybookVars:
    """A schema file's text: ``{name: {type: ..., ...}}``; RolloutRefused names the flaw."""
    source = source or playbook
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RolloutRefused(f"{source} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RolloutRefused(f"{source} must map variable names to what they may hold")
    specs: dict[str, VarSpec] = {}
    for name, body in raw.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or reserved(name):
            raise RolloutRefused(f"{source}: {name!r} cannot be a rollout's variable")
        specs[name] = _spec(body, f"{source}: {name}", top=True)
    return PlaybookVars(playbook, specs)


def _spec(body: object, where: str, *, top: bool = False) -> VarSpec:
    if not isinstance(body, dict) or not set(body) <= _SPEC_KEYS:
        raise RolloutRefused(f"{where}: a mapping of {', '.join(sorted(_SPEC_KEYS))}")
    kinds = body.get("type")
    types = tuple(kinds) if isinstance(kinds, list) else (kinds,)
    if not types or not all(t in _TYPES for t in types):
        raise RolloutRefused(f"{where}: type must be one or a list of {', '.join(sorted(_TYPES))}")
    if ("school_it" in body or "about" in body) and not top:
        raise RolloutRefused(f"{where}: school_it and about belong to the variable itself")
    pattern = body.get("pattern")
    try:
        compiled = re.compile(pattern) if pattern is not None else None
    except (re.error, TypeError) as exc:
        raise RolloutRefused(f"{where}: pattern {pattern!r}: {exc}") from None
    bounds = [body.get("min"), body.get("max")]
    if not all(b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in bounds):
        raise RolloutRefused(f"{where}: min and max are whole numbers")
    choices = body.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str | int | bool) for c in choices):
        raise RolloutRefused(f"{where}: choices is a list of plain values")
    items = body.get("items")
    values = body.get("values")
    if ("list" in types) != (items is not None) or ("dict" in types) != (values is not None):
        raise RolloutRefused(f"{where}: a list needs items, a mapping values (and only they)")
    return VarSpec(
        types=types,
        choices=tuple(choices),
        pattern=compiled,
        low=bounds[0],
        high=bounds[1],
        items=_spec(items, f"{where} items") if items is not None else None,
        values=_spec(values, f"{where} values") if values is not None else None,
        school_it=body.get("school_it", False) is True,
        about=str(body.get("about", "")),
    )


def check_extra_vars(text: str, schema: PlaybookVars, *, central: bool) -> dict[str, object]:
    """The request's extra vars (JSON text of an object), once every name is one the
    playbook takes and the caller may set (``central``: central-ops; else school-it) and
    every value is what its schema allows. RolloutRefused names the first variable not."""
    if not text:
        return {}
    _check_shape(text)
    try:
        value = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise RolloutRefused(f"extra vars are not valid JSON: {exc.msg} at {exc.pos}") from None
    except ValueError as exc:  # a number of thousands of digits, a repeated name, NaN
        raise RolloutRefused(f"extra vars: {exc}") from None
    if not isinstance(value, dict):
        raise RolloutRefused("extra vars must be a mapping of names to values")
    for name, item in value.items():
        _check_var(name, item, schema, central)
    return value


def _check_var(name: str, item: object, schema: PlaybookVars, central: bool) -> None:
    shown = _show(name)
    if reserved(name):
        raise RolloutRefused(
            f"extra var {shown}: Ansible's own and connection variables cannot be set"
        )
    spec = schema.specs.get(name)
    if spec is None:
        allowed = schema.names(central)
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise RolloutRefused(f"extra var {shown} is not a variable of {schema.playbook}; {takes}")
    if not central and not spec.school_it:
        raise RolloutRefused(f"extra var {shown} of {schema.playbook} is for central-ops only")
    if why := _mismatch(item, spec, 1):
        raise RolloutRefused(f"extra var {shown}: {why}")


def _mismatch(value: object, spec: VarSpec, depth: int) -> str:
    """Why ``value`` (at ``depth``, 1 for a variable) breaks ``spec``; "" when not."""
    kind = _kind(value)
    if kind not in spec.types or (spec.choices and value not in spec.choices):
        return f"must be {spec.describe()}, got {_show(value)}"
    if isinstance(value, str):
        return _text_mismatch(value, spec)
    if isinstance(value, int) and not isinstance(value, bool):
        return _number_mismatch(value, spec)
    if isinstance(value, list) and spec.items is not None:
        return _bounds(len(value), spec, "items", _ITEMS_MAX) or _list_mismatch(
            value, spec.items, depth
        )
    if isinstance(value, dict) and spec.values is not None:
        return _bounds(len(value), spec, "keys", _ITEMS_MAX) or _dict_mismatch(
            value, spec.values, depth
        )
    return ""


def _number_mismatch(value: int, spec: VarSpec) -> str:
    if spec.low is not None and value < spec.low:
        return f"must be at least {spec.low}, got {value}"
    if spec.high is not None and value > spec.high:
        return f"must be at most {spec.high}, got {value}"
    return ""


def _text_mismatch(value: str, spec: VarSpec) -> str:
    if why := _bounds(len(value), spec, "characters", _STR_MAX):
        return why
    if spec.pattern is not None and not spec.pattern.fullmatch(value):
        return f"must match {spec.pattern.pattern}, got {_show(value)}"
    return ""


def _list_mismatch(value: list[object], items: VarSpec, depth: int) -> str:
    if value and depth >= DEPTH_MAX:
        return f"nested deeper than {DEPTH_MAX}"
    for n, item in enumerate(value, 1):
        if why := _mismatch(item, items, depth + 1):
            return f"item {n} {why}"
    return ""


def _dict_mismatch(value: dict[str, object], values: VarSpec, depth: int) -> str:
    if value and depth >= DEPTH_MAX:
        return f"nested deeper than {DEPTH_MAX}"
    for key, item in value.items():
        if not _KEY.fullmatch(key) or key.startswith("__"):
            return f"key {_show(key)} is not a name (letters, digits, _)"
        if why := _mismatch(item, values, depth + 1):
            return f"key {key} {why}"
    return ""


def _bounds(size: int, spec: VarSpec, unit: str, default_max: int) -> str:
    high = spec.high if spec.high is not None else default_max
    if size > high:
        return f"at most {high} {unit}, got {size}"
    if spec.low is not None and size < spec.low:
        return f"at least {spec.low} {unit}, got {size}"
    return ""


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    for kind, cls in (("int", int), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(value, cls):
            return kind
    return type(value).__name__  # float, None: no schema type


def _check_shape(text: str) -> None:
    """Size and nesting, read from the raw text: the parser's recursion would fail on
    deep nesting (30,000 levels), so nothing deeper than DEPTH_MAX reaches it."""
    size = len(text.encode())
    depth, key, start, expect_key = 0, "", 0, False
    sizes: dict[str, int] = {}
    for token in _TOKENS.finditer(text):
        mark = token.group()
        if mark in "[{":
            depth += 1
            expect_key = depth == 1
            if depth > DEPTH_MAX + 1:
                what = f"extra var {_show(key)}:" if key else "extra vars are"
                raise RolloutRefused(f"{what} nested deeper than {DEPTH_MAX}")
        elif depth == 1 and mark in ",}":
            value = len(text[start : token.start()].strip().encode())
            sizes[key] = max(sizes.get(key, 0), value)
            expect_key = mark == ","
        elif depth == 1 and expect_key and mark.startswith('"'):
            key, expect_key = _decode(mark), False
        elif depth == 1 and mark == ":":
            start = token.end()
        if mark in "]}":
            depth -= 1
    if size > TEXT_MAX:
        name = max(sizes, key=sizes.__getitem__, default="")
        raise RolloutRefused(
            f"extra var {_show(name)} is {sizes.get(name, size)} bytes; extra vars are at"
            f" most {TEXT_MAX} bytes in all, got {size}"
        )


def _decode(token: str) -> str:
    try:
        value = json.loads(token)
    except ValueError:
        return token[1:-1]
    return value if isinstance(value, str) else ""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"{_show(key)} is given twice")
        out[key] = value
    return out


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def _show(value: object) -> str:
    """A value in a message: its repr, cut short (it came from a person)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unsafe(value: object) -> object:
    """``value`` with every string, at every depth, in the JSON form Ansible reads as
    unsafe text (``{"__ansible_unsafe": ...}``): never templated, so a lookup in it is
    only text. Dict keys stay as they are: the schema allows only plain names there."""
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    if isinstance(value, list):
        return [unsafe(v) for v in value]
    if isinstance(value, dict):
        return {k: unsafe(v) for k, v in value.items()}
    return value


def unsafe_vars(extra_vars: Mapping[str, object]) -> dict[str, object]:
    """A rollout's extra vars as Ansible reads them from a JSON file: every string
    unsafe (see :func:`unsafe`)."""
    return {name: unsafe(value) for name, value in extra_vars.items()}
