"""``schoolfleet-controller store ...``: the store itself, moved between databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from controller import settings as controller_settings
from controller.commands.options import Config, DataDir, JsonOut, fail, one_line_errors

store_app = typer.Typer(
    help="The controller's store: move a district's SQLite file into PostgreSQL.",
    no_args_is_help=True,
)


@store_app.command("migrate")
def migrate(
    from_: Annotated[
        str,
        typer.Option("--from", metavar="URL", help="The SQLite store to copy: sqlite:///PATH."),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="URL",
            help="An empty PostgreSQL database: postgresql://... (any URL libpq takes).",
        ),
    ],
    config: Config = controller_settings.DEFAULT_CONFIG,
    data_dir: DataDir = None,
    json_output: JsonOut = False,
) -> None:
    """Copy every table of a SQLite store into an empty PostgreSQL database in one
    transaction, and check every table's count before it commits.

    Stop the controller first: the data folder's lock is held while copying, so a
    controller serving from it cannot write meanwhile. The SQLite file is brought to
    this controller's schema first, as `serve` would; it is not changed otherwise.
    Afterwards point every controller's `database` at the PostgreSQL URL.
    """
    from controller.datadir import lock as data_lock
    from controller.store import sqlite_path
    from controller.store.transfer import transfer
    from controller.stores import POSTGRES_SCHEMES

    with one_line_errors():
        if not to.startswith(POSTGRES_SCHEMES):
            fail(f"--to {to!r}: expected a postgresql:// URL")
        source = sqlite_path(from_)
        settings = controller_settings.load(config, {"data_dir": data_dir})
        data_lock.hold_created(settings.data_dir)
        moved = transfer(Path(source), to)
    if json_output:
        print(json.dumps(moved.to_dict(), indent=2))
        return
    for table in moved.tables:
        print(f"{table.name:<22} {table.rows:>10}")
    nuls = f"; {moved.nuls_written_out} NULs written as \\x00" if moved.nuls_written_out else ""
    print(
        f"copied {moved.rows} rows in {len(moved.tables)} tables from {moved.source} to "
        f"{moved.target} in {moved.seconds:.1f} s (schema {moved.schema_version}); "
        f"every count matches{nuls}"
    )
