"""What ``schoolfleet-controller``'s commands share: their common options, and one way
to end on a person's mistake (one line on stderr, exit 2, never a traceback)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from common.errors import SchoolFleetError

PROG = "schoolfleet-controller"

Config = Annotated[
    Path,
    typer.Option(help="The controller's TOML settings (its data_dir and database)."),
]
DataDir = Annotated[
    Path | None, typer.Option(metavar="DIR", help="Data folder; overrides the config.")
]
Database = Annotated[str | None, typer.Option(help="Store URL; overrides the config.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def fail(message: str) -> NoReturn:
    """Ends the command: ``message`` on one line of stderr, exit 2."""
    print(f"{PROG}: {message}", file=sys.stderr)
    raise typer.Exit(2)


@contextlib.contextmanager
def one_line_errors(path: object = "") -> Iterator[None]:
    """A refusal (SchoolFleetError) or a file that cannot be used (OSError, named by
    its file or else ``path``) ends the command in one line."""
    try:
        yield
    except SchoolFleetError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or path}: {exc.strerror}")
