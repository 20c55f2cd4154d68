"""schoolctl inventory, aps and servers: import the schools' infrastructure, see the
access points and servers with their probes and the BSSIDs devices name that no
access point has, and trust a server's SSH host key."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli import completion
from cli import render_infra as render
from cli.client.values import InfraTarget, KeyFingerprint
from cli.errors import CliError, DeviceUnavailable, RequestRefused
from cli.groups import command_group
from cli.imports import ImportReport
from cli.options import JsonFlag, client, err, out, print_json
from inventory.infra import Room, School
from inventory.infra_file import InventoryFileError, open_inventory
from inventory.infra_rows import InventoryRow, check_inventory

inventory_app = command_group(
    "The schools' infrastructure: import schools, rooms, Wi-Fi access points and "
    "servers from a CSV or YAML file."
)
aps_app = command_group(
    "Wi-Fi access points: up or down by the controller's probes, and what the "
    "devices around them see."
)
servers_app = command_group("School servers: probes, facts read over SSH, and their SSH host keys.")
SchoolOption = Annotated[
    str | None,
    typer.Option("--school", help="Only this school.", autocompletion=completion.schools),
]


def _by_school(rows: Sequence[InventoryRow]) -> list[list[InventoryRow]]:
    """A school's rows together, its school row and rooms first, so that each part the
    controller checks holds what its rows refer to."""
    groups: dict[str, list[InventoryRow]] = {}
    for row in rows:
        groups.setdefault(row.item.school_id, []).append(row)

    def order(row: InventoryRow) -> int:
        return 0 if isinstance(row.item, School) else 1 if isinstance(row.item, Room) else 2

    return [sorted(g, key=order) for g in groups.values()]


@inventory_app.command(
    "import", short_help="Import schools, rooms, access points and servers from a file."
)
def inventory_import(
    path: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="An inventory, .csv or .yaml.", show_default=False),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check every row; store nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Import schools, rooms, access points and servers. Every row is checked; each bad
    row is reported with its line and reason, the good ones are stored (nothing else is
    removed). The same file again changes nothing.

    CSV: one table with a type column (school, room, ap or server) and
    the columns type,id,school,room,name,location,model,mac,bssids,
    address,ssh_user,ssh_port. A cell that does not apply to its row's
    type stays empty; bssids are separated by spaces or ';'.

    YAML: {schools: [...], rooms: [...], access_points: [...],
    servers: [...]}, each a list of mappings with those field names
    (bssids may be a list).

    A room, access point or server needs its school in the file or
    imported before; an address is an IP address or a host name.
    Exits 1 if any row was refused, 2 if the file cannot be read."""
    try:
        parsed = list(open_inventory(path).rows())
    except InventoryFileError as exc:
        raise RequestRefused(str(exc)) from None
    # The file's own contradictions here; the controller checks every row again
    # against what it stores (schools, rooms, BSSIDs) and the caller's schools.
    good, refused = check_inventory(parsed, None)
    report = ImportReport(
        path,
        len(parsed),
        dry_run,
        {"added": 0, "updated": 0, "unchanged": 0},
        [(e.line, e.message) for e in refused],
    )
    if good:
        with client() as c:
            report.add(c.infra.import_rows(path.name, _by_school(good), dry_run))
    report.show(as_json)
    if report.errors:
        raise typer.Exit(1)


DownFlag = Annotated[bool, typer.Option("--down", help="Only those the latest probe found down.")]


def _show(
    targets: Iterable[InfraTarget],
    what: str,
    filtered: bool,
    as_json: bool,
    to_json: Callable[[InfraTarget, float], dict[str, Any]],
    table: Callable[[list[InfraTarget], float], Table],
) -> None:
    found = sorted(targets, key=lambda t: (t.school_id, t.target_id))
    now = time.time()
    if as_json:
        print_json([to_json(t, now) for t in found])
    elif not found:
        err.print(f"no {what} match" if filtered else f"no {what} imported")
    else:
        out.print(table(found, now))


@aps_app.command("list", short_help="Access points: up or down, devices associated, median signal.")
def aps_list(
    school: SchoolOption = None, down: DownFlag = False, as_json: JsonFlag = False
) -> None:
    """Access points with their state (up, down and why, or unknown: never probed),
    when they were last probed, the devices associated with them and their median
    signal, and when a device last saw one of their BSSIDs (flagged after a day)."""
    with client() as c:
        aps = list(c.infra.access_points(school, down))
        unknown = None if as_json else c.infra.unknown_bssids(school)
    _show(aps, "access points", bool(school or down), as_json, render.ap_json, render.aps_table)
    if unknown is not None and (count := len(unknown.bssids) + unknown.more):
        out.print(render.unknown_hint(count), markup=False)


@aps_app.command(
    "unknown", short_help="BSSIDs devices are associated with that no access point has."
)
def aps_unknown(school: SchoolOption = None, as_json: JsonFlag = False) -> None:
    """BSSIDs devices are associated with that no access point in the inventory has
    (a missing inventory row, or an access point that is not ours): per school, how
    many devices' latest report names one, their median signal, and when the latest
    such report came. A missing row is added with schoolctl inventory import."""
    with client() as c:
        answer = c.infra.unknown_bssids(school)
    found = list(answer.bssids)
    if as_json:
        print_json([render.unknown_json(u) for u in found])
    elif not found:
        err.print("no BSSIDs seen by devices are missing from the inventory")
    else:
        out.print(render.unknown_table(found, time.time()))
    if answer.more:
        err.print(f"{answer.more} more not shown: ask for one school with --school")


@servers_app.command(
    "list", short_help="Servers: up or down, uptime, load, memory, disk, host key."
)
def servers_list(
    school: SchoolOption = None, down: DownFlag = False, as_json: JsonFlag = False
) -> None:
    """Servers with their state, the facts their SSH probe read (uptime, load, memory,
    disk) and their host key: pinned, seen-not-trusted, or none."""
    with client() as c:
        servers = c.infra.servers(school, down)
    filtered = bool(school or down)
    _show(servers, "servers", filtered, as_json, render.server_json, render.servers_table)


ServerId = Annotated[str, typer.Argument(metavar="ID", help="The server's id.")]


@servers_app.command("show", short_help="One server: its probe, facts and host keys.")
def servers_show(server_id: ServerId, as_json: JsonFlag = False) -> None:
    """One server: its latest probe, facts (uptime, load, memory, disk) and host keys:
    the pinned one, and one seen but not trusted, with their SHA256 fingerprints."""
    with client() as c:
        server = c.infra.server(server_id)
    if as_json:
        print_json(render.server_json(server, time.time()))
    else:
        out.print(render.server_detail(server, time.time()))


@servers_app.command("trust", short_help="Pin the SSH host key a server presents.")
def servers_trust(
    server_id: ServerId,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Pin the SSH host key the server presented to the controller's probe: from then
    on its facts are collected, and any other key is refused as a changed key.

    Compare the fingerprint with the server's own before you say yes:
    ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on its console."""
    with client() as c:
        server = c.infra.server(server_id)
        seen = server.seen_key
        if seen is None:
            if server.pinned_key is not None:
                raise CliError(
                    f"{server_id}: key {server.pinned_key.fingerprint} is pinned and no "
                    "other key was seen: nothing to trust"
                )
            raise DeviceUnavailable(
                f"{server_id}: no host key seen yet; wait for its next probe "
                f"(schoolctl servers show {server_id})"
            )
        err.print(
            f"{server_id} ({server.address}) presents {seen.key_type} {seen.fingerprint}",
            markup=False,
        )
        if server.pinned_key is not None:
            err.print(f"it replaces the pinned key {server.pinned_key.fingerprint}", markup=False)
        if not yes and not typer.confirm("Trust this key?"):
            raise typer.Exit(1)
        trusted = c.infra.trust_server_key(server_id, seen.fingerprint)
    if as_json:
        print_json(render.server_json(trusted, time.time()))
    else:
        # The controller answers a trust with the key it pinned (a message's default, empty
        # key if it ever did not, as before).
        key = trusted.pinned_key or KeyFingerprint("", "")
        out.print(f"{server_id}: pinned {key.key_type} {key.fingerprint}", markup=False)
