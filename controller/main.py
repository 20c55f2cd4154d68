"""``schoolfleet-controller``: the controller's command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from common.errors import SchoolFleetError
from common.logs import setup_logging
from controller import settings as controller_settings

log = logging.getLogger("controller")

app = typer.Typer(
    help="The SchoolFleet controller: keeps the fleet's state and talks to every agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """The SchoolFleet controller."""


@app.command()
def serve(
    config: Annotated[
        Path,
        typer.Option(
            help="TOML settings file; every key may also come from SCHOOLFLEET_CONTROLLER_<KEY>."
        ),
    ] = controller_settings.DEFAULT_CONFIG,
    listen: Annotated[
        str | None, typer.Option(help="gRPC HOST:PORT for agents and schoolctl.")
    ] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(help="HOST:PORT for Prometheus /metrics.")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="Store URL, e.g. sqlite:///var/lib/schoolfleet/controller.db")
    ] = None,
    ports_file: Annotated[
        Path | None, typer.Option(help="Write the bound ports here as JSON (for port 0).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
) -> None:
    """Run the controller until SIGTERM or SIGINT; queued heartbeats are stored first."""
    try:
        settings = controller_settings.load(
            config,
            {
                "listen": listen,
                "metrics_listen": metrics_listen,
                "database": database,
                "ports_file": ports_file,
                "log_level": log_level,
            },
        )
        setup_logging(settings.log_level)
        asyncio.run(controller_serve(settings))
    except SchoolFleetError as exc:
        print(f"schoolfleet-controller: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


async def controller_serve(settings: controller_settings.ControllerSettings) -> None:
    """Imported late: the gRPC stack is only needed when serving."""
    from controller.server import serve as run_server

    await run_server(settings)


def run() -> None:
    """Console entry point."""
    app()
