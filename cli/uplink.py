"""schoolctl uplink: schools' measured internet uplinks."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli import completion
from cli import render_uplink as render
from cli.errors import DeviceUnavailable
from cli.groups import command_group
from cli.options import JsonFlag, client, err, out, print_json
from inventory.uplink import UplinkState

uplink_app = command_group(
    "Schools' internet uplinks: a device of each school fetches a sized payload "
    "from the controller now and then, and the Mbit/s it saw is the school's uplink."
)


@uplink_app.command("check")
def uplink_check(
    school: Annotated[
        str, typer.Option(metavar="ID", help="The school.", autocompletion=completion.schools)
    ],
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the check to end.", min=1.0)
    ] = 120.0,
    as_json: JsonFlag = False,
) -> None:
    """Measure a school's uplink now, from one of its online devices (its server
    first), and wait for the result. A check of the school already running is joined.

    Exits 5 if no device of the school can measure, or the check fails."""
    with client() as c:
        check = c.uplink.check(school, wait)
    if as_json:
        print_json(render.check_json(check))
    if check.state is not UplinkState.OK:
        raise DeviceUnavailable(render.check_line(check))
    if not as_json:
        out.print(render.check_line(check), markup=False)


@uplink_app.command("list")
def uplink_list(
    school: Annotated[
        str | None,
        typer.Option(metavar="ID", help="Only this school.", autocompletion=completion.schools),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Each school's latest measurement, and its latest check if that one failed."""
    with client() as c:
        schools = c.uplink.schools(school)
    if as_json:
        print_json(render.uplinks_json(schools))
    elif not schools:
        err.print("no uplink checks yet")
    else:
        out.print(render.uplinks_table(schools, time.time()))
