"""What every schoolctl command shares: global options, output, the controller client."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO, cast

import typer
from rich.console import Console

from cli.config import CliConfig, config_path, read_config
from cli.errors import CliError

if TYPE_CHECKING:
    from cli.client.admin import AdminClient

DEFAULT_CONTROLLER = "127.0.0.1:7443"
ENV_TOKEN = "SCHOOLCTL_TOKEN"  # noqa: S105 (a variable's name, not a secret)


class _TrimmedLines(io.TextIOBase):
    """stdout without the spaces rich pads each table cell with at the end of a line
    (a `devices show` line would otherwise run to the widest row). sys.stdout is looked
    up at each write, as rich does, so that a test runner's capture still sees it."""

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            sys.stdout.write(line.rstrip(" ") + "\n")
        return len(text)

    def flush(self) -> None:
        if self._partial:
            sys.stdout.write(self._partial)
            self._partial = ""
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()

    def fileno(self) -> int:
        return sys.stdout.fileno()


# Scripts read stdout; people and diagnostics go through stderr or the table.
# Piped into grep or a file, tables keep every character: no terminal width to fit.
out = Console(
    # A text stream in all but its type: rich only writes, flushes and asks isatty.
    file=cast(TextIO, _TrimmedLines()),
    soft_wrap=True,
    highlight=False,
    width=None if sys.stdout.isatty() else 250,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


class Options:
    """Global options, set by the top-level callback; None: not given on the command line."""

    controller: str | None = None
    timeout: float = 10.0
    ca_cert: Path | None = None


def config() -> CliConfig:
    """The user's config file (see cli/config.py)."""
    return read_config(config_path(os.environ))


def _loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _say(line: str) -> None:
    err.print(line, markup=False)


def client(token: str | None = None, warn: Callable[[str], None] = _say) -> AdminClient:
    """A client for the controller the flags, environment or config file name.

    ``token`` overrides the user's own (for ``login``, which checks a new one); a
    warning goes to ``warn`` (stderr by default)."""
    # Late import: `schoolctl --help` should not pay for the gRPC stack.
    from cli.client.admin import AdminClient

    saved = config()
    address = Options.controller or saved.controller or DEFAULT_CONTROLLER
    ca_path = Options.ca_cert or saved.ca_cert
    token = token or os.environ.get(ENV_TOKEN) or saved.token
    ca = None
    if ca_path is not None:
        try:
            ca = ca_path.read_bytes()
        except OSError as exc:
            raise CliError(f"--ca-cert {ca_path}: {exc.strerror}") from None
    elif token and not _loopback(address):
        warn(f"schoolctl: warning: no --ca-cert: your token goes to {address} unencrypted")
    return AdminClient(address, Options.timeout, ca, token)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
