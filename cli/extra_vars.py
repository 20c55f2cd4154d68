"""``schoolctl rollout start --extra-vars``: YAML or JSON text, or @FILE, to one JSON
object, with every flaw refused in one line before anything is sent."""

from __future__ import annotations

import contextlib
import json
from datetime import date
from pathlib import Path

from cli.errors import RequestRefused

# The controller's limit (TEXT_MAX in controller/rollouts/playbook_vars.py); checked
# while encoding, it also stops a YAML file of nested aliases from growing without end.
_EXTRA_VARS_MAX = 64 * 1024


def _json_value(value: object) -> str:
    # YAML reads 2026-09-01 as a date; JSON has none, so it goes as the text it was.
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} values cannot be sent")


def _read_vars_file(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(_EXTRA_VARS_MAX + 1)
    except OSError as exc:
        raise RequestRefused(f"--extra-vars @{path}: {exc.strerror}") from None
    if len(raw) > _EXTRA_VARS_MAX:
        raise RequestRefused(f"--extra-vars @{path}: larger than {_EXTRA_VARS_MAX // 1024} KiB")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise RequestRefused(f"--extra-vars @{path}: not UTF-8 text") from None


def _load_vars(text: str) -> object:
    """JSON if it is JSON (YAML 1.1 reads JSON's 1e+16 as a string), else YAML."""
    import yaml

    with contextlib.suppress(ValueError):
        return json.loads(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise RequestRefused(f"--extra-vars: not valid YAML or JSON: {problem}{at}") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise RequestRefused(f"--extra-vars: {exc}") from None


def parse_extra_vars(text: str) -> str:
    """``--extra-vars``: YAML or JSON text, or ``@FILE``, naming a mapping of variable
    names to values; returns it as a JSON object. Raises RequestRefused naming the flaw."""
    if text.startswith("@"):
        text = _read_vars_file(Path(text[1:]))
    try:
        data = _load_vars(text)
        if not isinstance(data, dict):
            raise RequestRefused(
                "--extra-vars must be a mapping of names to values, e.g. 'ntp_server: 10.0.0.1'"
            )
        for name in data:
            if not isinstance(name, str) or not name.isidentifier():
                raise RequestRefused(
                    f"--extra-vars name {name!r}: use letters, digits and _ (not first a digit)"
                )
        encoder = json.JSONEncoder(default=_json_value, allow_nan=False)
        parts: list[str] = []
        size = 0
        for part in encoder.iterencode(data):
            size += len(part)
            if size > _EXTRA_VARS_MAX:
                raise RequestRefused(
                    f"--extra-vars: more than {_EXTRA_VARS_MAX // 1024} KiB as JSON"
                )
            parts.append(part)
    except RecursionError:
        raise RequestRefused("--extra-vars: nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise RequestRefused(f"--extra-vars: {exc}") from None
    return "".join(parts)
