"""Reads one frozen, typed settings dataclass from its sources.

Precedence: field defaults < TOML file < environment (``PREFIX_KEY``) < overrides
(command-line flags). Every value is checked against the field's type; a wrong one
raises :class:`ConfigError` naming the source and the key. The lenient variant
instead falls back to the field's default and returns the problem as a line of text,
for a daemon that must keep running on a config file with one mistake in it.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import ConfigError, SettingError

T = typing.TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _is_str_list(kind: object) -> bool:
    """``tuple[str, ...]``: a list of strings (a tuple, so the settings stay frozen)."""
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, ...)


def _type_name(kind: type) -> str:
    if _is_str_list(kind):
        return "a list of strings"
    if issubclass(kind, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in kind)
    return {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a string")


def _from_toml(kind: type, value: object) -> object:
    """Checks a value parsed by tomllib; returns it converted, or raises ValueError."""
    if _is_str_list(kind):
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
    elif kind is bool:
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
    if _is_str_list(kind):
        # Written as in the file, a TOML array: '["chromium", "--kiosk", "{url}"]'. Not
        # split on spaces: an argument may contain one, and no shell quoting applies.
        try:
            parsed = tomllib.loads(f"value = {text}")
        except tomllib.TOMLDecodeError:
            raise ValueError from None
        if list(parsed) != ["value"]:
            raise ValueError
        return _from_toml(kind, parsed["value"])
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
    """The settings fields and their types: bool, int, float, str, Path, an Enum, or
    ``tuple[str, ...]`` (a list in the file). Optional is not supported."""
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
    problems = _Problems(cls, lenient=False)
    sources = _Sources(path, env_prefix, environ or {}, overrides or {}, required_file)
    return _build(cls, sources, problems)


def load_settings_lenient(
    cls: type[T],
    *,
    path: Path | None = None,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    required_file: bool = False,
) -> tuple[T, list[str]]:
    """Like :func:`load_settings`, but a bad value falls back to the field's default.

    A value of the wrong type (file or environment), one that ``cls`` refuses, or an
    unknown key in the file is dropped, and a one-line problem is returned for each.
    A file that is not TOML at all is ignored as a whole. Still a ConfigError: a
    missing or unreadable required file, and a key without a default that is missing
    or bad (without it the program cannot know who it is).
    """
    problems = _Problems(cls, lenient=True)
    sources = _Sources(path, env_prefix, environ or {}, overrides or {}, required_file)
    return _build(cls, sources, problems), problems.found


@dataclasses.dataclass(frozen=True, slots=True)
class _Sources:
    """Where the values come from, in increasing precedence after the defaults."""

    path: Path | None
    env_prefix: str
    environ: Mapping[str, str]
    overrides: Mapping[str, object]
    required_file: bool


class _Problems:
    """Decides what a bad value does: raise at once, or (lenient) note it and go on.

    Called from ``except`` blocks, hence ``from None``: the parser's own exception
    says nothing the message does not.
    """

    def __init__(self, cls: type, *, lenient: bool) -> None:
        self.lenient = lenient
        self.defaults = _defaults(cls)
        self.found: list[str] = []
        # Kept so that, if the file was unreadable TOML and the required keys are
        # therefore missing, the error names the cause rather than the symptom.
        self.file_error: str | None = None

    def bad_value(self, message: str, key: str, *, name_key: bool = False) -> None:
        """Raises unless lenient and ``key`` has a default to fall back on.

        ``name_key``: the message does not start with ``key``, so say which one is reset.
        """
        if not self.lenient or key not in self.defaults:
            raise ConfigError(message) from None
        which = f" for {key!r}" if name_key else ""
        self.found.append(f"{message}; using the default {_show(self.defaults[key])}{which}")

    def unknown_key(self, message: str) -> None:
        if not self.lenient:
            raise ConfigError(message) from None
        self.found.append(f"{message}; ignored")

    def bad_file(self, message: str) -> None:
        if not self.lenient:
            raise ConfigError(message) from None
        self.file_error = message
        self.found.append(f"{message}; ignoring the file")


def _defaults(cls: type) -> dict[str, object]:
    defaults: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def _show(value: object) -> str:
    """A default as the user would write it in the file."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def _build(cls: type[T], sources: _Sources, problems: _Problems) -> T:
    types = field_types(cls)
    values: dict[str, Any] = {}
    # Which source set each key, so a refused value is reported where it was written.
    origins: dict[str, str] = {}
    source = f"config {sources.path}" if sources.path is not None else "settings"
    if sources.path is not None:
        from_file = _read_file(sources.path, types, sources.required_file, problems)
        values.update(from_file)
        origins.update(dict.fromkeys(from_file, source))
    for key, kind in types.items():
        name = f"{sources.env_prefix}{key.upper()}"
        text = sources.environ.get(name)
        if text is None:
            continue
        try:
            values[key] = _from_text(kind, text)
            origins[key] = f"environment {name}"
        except ValueError:
            problems.bad_value(f"environment {name}={text!r}: must be {_type_name(kind)}", key)
            # The lenient promise is the default, not whatever a lower source said.
            values.pop(key, None)
            origins.pop(key, None)
    for key, value in sources.overrides.items():
        if value is not None:
            values[key] = value
            origins[key] = f"flag --{key.replace('_', '-')}"
    missing = [key for key in types if key not in values and key not in problems.defaults]
    if missing:
        if problems.file_error is not None:
            raise ConfigError(problems.file_error)
        keys = ", ".join(repr(m) for m in missing)
        raise ConfigError(f"{source}: missing required key {keys} (or {sources.env_prefix}<KEY>)")
    # Each pass either returns, raises, or drops one more key from ``values``, so
    # this ends after at most one retry per field.
    while True:
        try:
            return cls(**values)
        except SettingError as exc:
            culprit = next((k for k in exc.keys if k in values), None)
            if culprit is None:
                raise ConfigError(f"{source}: {exc}") from None
            # A rule over several keys does not say which one was reset; name it.
            blames_culprit = str(exc).startswith(f"{culprit!r} ")
            problems.bad_value(
                f"{origins.get(culprit, source)}: {exc}", culprit, name_key=not blames_culprit
            )
            del values[culprit]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _read_file(
    path: Path, types: Mapping[str, type], required: bool, problems: _Problems
) -> dict[str, object]:
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
        problems.bad_file(f"config {path}: not valid TOML: {exc}")
        return {}
    values: dict[str, object] = {}
    for key, value in raw.items():
        kind = types.get(key)
        if kind is None:
            known = ", ".join(sorted(types))
            problems.unknown_key(f"config {path}: unknown key {key!r} (known keys: {known})")
            continue
        try:
            values[key] = _from_toml(kind, value)
        except ValueError:
            problems.bad_value(
                f"config {path}: {key!r} must be {_type_name(kind)}, got {value!r}", key
            )
    return values
