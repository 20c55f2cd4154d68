"""schoolctl's own file: where the controller is, its CA, and the user's token.

The token is a password: the file must be readable by its owner only (like ssh's
keys), and is written that way by ``schoolctl login``.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cli.errors import CliError

ENV_CONFIG = "SCHOOLCTL_CONFIG"
_KEYS = ("controller", "ca_cert", "token")


def config_path(environ: Mapping[str, str]) -> Path:
    """$SCHOOLCTL_CONFIG, else $XDG_CONFIG_HOME (~/.config)/schoolfleet/schoolctl.toml."""
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "schoolfleet" / "schoolctl.toml"


@dataclass(frozen=True, slots=True)
class CliConfig:
    """What the file says; None where it says nothing."""

    controller: str | None = None
    ca_cert: Path | None = None
    token: str | None = None


def read_config(path: Path) -> CliConfig:
    """The file's settings; an absent file is an empty one. Raises CliError naming the
    file for bad TOML, unknown keys, wrong types, or a token others could read."""
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return CliConfig()
    except OSError as exc:
        raise CliError(f"config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"config {path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise CliError(f"config {path}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    for key, value in data.items():
        if not isinstance(value, str) or not value:
            raise CliError(f"config {path}: {key!r} must be a non-empty string")
    if "token" in data and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CliError(
            f"config {path}: mode {stat.S_IMODE(mode):04o} lets others read your token; "
            f"run: chmod 600 {path}"
        )
    ca = data.get("ca_cert")
    return CliConfig(data.get("controller"), Path(ca) if ca else None, data.get("token"))


def write_config(path: Path, config: CliConfig) -> None:
    """Writes the file readable by its owner only, atomically."""
    values = {"controller": config.controller, "ca_cert": config.ca_cert, "token": config.token}
    # json.dumps of a str is a valid TOML basic string.
    text = "".join(f"{k} = {json.dumps(str(v))}\n" for k, v in values.items() if v is not None)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"config {path}: cannot write it ({exc.strerror})") from None
