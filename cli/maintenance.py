"""schoolctl maintenance: the windows in which rollouts may change a school's devices."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import completion
from cli import render_rollouts as render
from cli.errors import RequestRefused
from cli.groups import command_group
from cli.options import JsonFlag, client, err, out, print_json

maintenance_app = command_group(
    "Schools' maintenance windows: rollouts change a school's devices only inside "
    "them (and never in a room during a lesson). A school without windows may be "
    "changed any time free of lessons."
)


@maintenance_app.command("set")
def maintenance_set(
    school: Annotated[
        str, typer.Option(metavar="ID", help="The school.", autocompletion=completion.schools)
    ],
    windows: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="WINDOW",
            help="DAYS HH:MM-HH:MM, each quoted: 'mon-fri 18:00-06:00' 'sat,sun 00:00-24:00'; "
            "DAYS is daily, or day names and ranges (mon..sun).",
            show_default=False,
        ),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove all its windows (any time free of lessons).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Set a school's maintenance windows, replacing those it had.

    A window that ends at or before its start (18:00-06:00) runs past midnight to the
    next morning; times are in the controller's time zone."""
    if clear == bool(windows):
        raise RequestRefused("give the school's windows, or --clear to remove them all (not both)")
    from inventory.school_day import WindowError, parse_window

    try:
        for window in windows or ():
            parse_window(window)
    except WindowError as exc:
        raise RequestRefused(str(exc)) from None
    with client() as c:
        answer = c.rollouts.set_maintenance_windows(school, windows or [])
    if as_json:
        print_json(render.windows_json(answer))
    elif answer.windows:
        out.print(f"school {answer.school_id}: {'; '.join(answer.windows)}", markup=False)
    else:
        out.print(
            f"school {answer.school_id}: no windows, changed any time free of lessons",
            markup=False,
        )


@maintenance_app.command("list")
def maintenance_list(
    school: Annotated[
        str | None,
        typer.Option(metavar="ID", help="Only this school.", autocompletion=completion.schools),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List schools' maintenance windows (schools without any are not listed)."""
    with client() as c:
        schools = c.rollouts.maintenance_windows(school)
    if as_json:
        print_json([render.windows_json(w) for w in schools])
    elif not schools:
        err.print("no maintenance windows: rollouts change devices any time free of lessons")
    else:
        out.print(render.windows_table(schools))
