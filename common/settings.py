"""Reads one frozen, typed settings dataclass from its sources.

Precedence: field defaults < TOML file < environment (``PREFIX_KEY``) < overrides
(command-line flags). Every value is checked against the field's type; a wrong one
raises :class:`ConfigError` naming the source and the key.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import ConfigError

T = typing.TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _type_name(kind: type) -> str:
    if issubclass(kind, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in kind)
    return {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a string")


def _from_toml(kind: type, value: object) -> object:
    """Checks a value parsed by tomllib; returns it converted, or raises ValueError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return _from_text(kind, value)
    raise ValueError


def _from_text(kind: type, text: str) -> object:
    """Parses an environment variable or flag; raises ValueError if it does not fit."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise ValueError
    if kind is int or kind is float or kind is Path:
        return kind(text)
    if issubclass(kind, enum.Enum):
        return kind(text)
    return text


def field_types(cls: type) -> dict[str, type]:
    """The settings fields and their concrete types (Optional is not supported)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def load_settings(
    cls: type[T],
    *,
    path: Path | None = None,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    required_file: bool = False,
) -> T:
    """Builds ``cls`` from defaults, the TOML file at ``path``, ``environ`` and ``overrides``.

    ``overrides`` values that are None are ignored (an unset flag). Validation in
    ``cls.__post_init__`` raising ValueError becomes a ConfigError too.
    """
    types = field_types(cls)
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(path, types, required_file))
    for key, kind in types.items():
        name = f"{env_prefix}{key.upper()}"
        text = (environ or {}).get(name)
        if text is not None:
            try:
                values[key] = _from_text(kind, text)
            except ValueError:
                raise ConfigError(
                    f"environment {name}={text!r}: must be {_type_name(kind)}"
                ) from None
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    source = f"config {path}" if path is not None else "settings"
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        keys = ", ".join(repr(m) for m in missing)
        raise ConfigError(f"{source}: missing required key {keys} (or {env_prefix}<KEY>)")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _read_file(path: Path, types: Mapping[str, type], required: bool) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config {path}: file not found") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from None
    values: dict[str, object] = {}
    for key, value in raw.items():
        kind = types.get(key)
        if kind is None:
            known = ", ".join(sorted(types))
            raise ConfigError(f"config {path}: unknown key {key!r} (known keys: {known})")
        try:
            values[key] = _from_toml(kind, value)
        except ValueError:
            raise ConfigError(
                f"config {path}: {key!r} must be {_type_name(kind)}, got {value!r}"
            ) from None
    return values
