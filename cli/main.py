"""``schoolctl``: what school IT staff run. Output for people, or --json for scripts."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import completion, people, render
from cli.errors import CliError
from cli.groups import command_group
from cli.inventory import aps_app, inventory_app, servers_app
from cli.lessons import lessons_app
from cli.maintenance import maintenance_app
from cli.options import DEFAULT_CONTROLLER, JsonFlag, Options, client, err, out, print_json
from cli.rollouts import rollout_app
from cli.schools import require_school
from cli.uplink import uplink_app
from inventory.model import Condition, DeviceKind, DeviceStatus

app = command_group(
    "SchoolFleet command line: see and manage your schools' devices.\n\n"
    "Start with 'schoolctl login' (a token from central ops); it keeps the controller's "
    "address, CA and your token in ~/.config/schoolfleet/schoolctl.toml (mode 0600).",
    # --install-completion / --show-completion for bash, zsh and fish; device, school,
    # rollout and playbook names complete from the controller (cli/completion.py).
    add_completion=True,
)
devices_app = command_group("List and inspect devices.")
app.add_typer(devices_app, name="devices")
enroll_app = command_group("Let new devices join: enrollment tokens.")
token_app = command_group(
    "Create, list and revoke enrollment tokens (a school's devices enroll with one)."
)
enroll_app.add_typer(token_app, name="token")
app.add_typer(enroll_app, name="enroll")
people.register(app)
app.add_typer(lessons_app, name="lessons")
app.add_typer(rollout_app, name="rollout")
app.add_typer(maintenance_app, name="maintenance")
app.add_typer(uplink_app, name="uplink")
app.add_typer(inventory_app, name="inventory")
app.add_typer(aps_app, name="aps")
app.add_typer(servers_app, name="servers")

DeviceId = Annotated[
    str, typer.Argument(metavar="ID", help="The device's id.", autocompletion=completion.devices)
]


@app.callback()
def _global(
    controller: Annotated[
        str | None,
        typer.Option(
            envvar="SCHOOLCTL_CONTROLLER",
            show_default=False,
            help=f"Controller gRPC address, HOST:PORT (default: from the config file, "
            f"else {DEFAULT_CONTROLLER}).",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the controller's answer.", min=0.1)
    ] = 10.0,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="SCHOOLCTL_CA_CERT",
            help="The controller's CA certificate: talk TLS to its enroll_listen port "
            "(default: from the config file).",
        ),
    ] = None,
) -> None:
    Options.controller = controller
    Options.timeout = timeout
    Options.ca_cert = ca_cert


@devices_app.command("list")
def devices_list(
    school: Annotated[
        str | None,
        typer.Option(help="Only this school's devices.", autocompletion=completion.schools),
    ] = None,
    kind: Annotated[DeviceKind | None, typer.Option(help="Only this kind.")] = None,
    status: Annotated[DeviceStatus | None, typer.Option(help="Only online or offline.")] = None,
    condition: Annotated[
        Condition | None,
        typer.Option(help="Only devices whose latest report says ok, degraded or critical."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List devices with their status, their own verdict and latest health."""
    with client() as c:
        devices = list(c.fleet.devices(school, kind, status, condition))
        if not devices:
            require_school(c, school)
    if as_json:
        print_json([render.device_json(d) for d in devices])
    elif not devices:
        err.print("no devices match")
    else:
        out.print(render.devices_table(devices, time.time()))


@devices_app.command("show")
def devices_show(
    device_id: DeviceId,
    as_json: JsonFlag = False,
) -> None:
    """Show one device in full: what it runs, its verdict and why, its disks,
    sensors, network interfaces and Wi-Fi, and whether its messages all arrived."""
    with client() as c:
        device = c.fleet.device(device_id)
    if as_json:
        print_json(render.device_json(device))
    else:
        out.print(render.device_detail(device, time.time()))


@devices_app.command("ping")
def devices_ping(
    device_id: DeviceId,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the device's answer.", min=0.1)
    ] = 10.0,
    as_json: JsonFlag = False,
) -> None:
    """Check that commands reach a device: send it a no-op and wait for its answer.

    Exits 5 if the device is not connected or does not answer within --wait."""
    from cli.errors import DeviceUnavailable

    with client() as c:
        command_id, issued_at = c.fleet.ping(device_id)
        deadline = time.monotonic() + wait
        while True:
            device = c.fleet.device(device_id)
            outcome = next((c for c in device.recent_commands if c.command_id == command_id), None)
            if outcome is not None:
                break
            if time.monotonic() >= deadline:
                raise DeviceUnavailable(
                    f"no answer from {device_id} within {wait:g}s to ping {command_id}"
                )
            time.sleep(0.2)
    round_trip = max(0.0, outcome.received_at - issued_at)
    if as_json:
        print_json(
            {
                "device_id": device_id,
                "command_id": command_id,
                "status": outcome.status,
                "message": outcome.message,
                "round_trip_seconds": round(round_trip, 3),
            }
        )
    else:
        out.print(f"{device_id}: {outcome.message or outcome.status} in {round_trip * 1000:.0f} ms")


@devices_app.command("reenroll")
def devices_reenroll(
    device_id: DeviceId,
    as_json: JsonFlag = False,
) -> None:
    """Let an enrolled (or decommissioned) device enroll again, e.g. after a disk swap.

    Its next enrollment, with a valid token, replaces its certificate."""
    with client() as c:
        enrolled = c.fleet.reenroll(device_id)
    if as_json:
        print_json({"device_id": enrolled.device_id, "reenroll_allowed": True})
    else:
        out.print(f"{enrolled.device_id} may enroll again (school {enrolled.school_id})")


@devices_app.command("decommission")
def devices_decommission(
    device_id: DeviceId,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Revoke a device's certificate and close its stream at once.

    It cannot connect again until `devices reenroll` and a new enrollment."""
    if not yes and not typer.confirm(f"Decommission {device_id}? It is cut off at once"):
        raise typer.Exit(1)
    with client() as c:
        revoked = c.fleet.decommission(device_id)
    if as_json:
        print_json({"device_id": revoked.device_id, "decommissioned": True})
    else:
        out.print(f"{revoked.device_id} decommissioned: its stream is closed and it is refused")


@devices_app.command("move")
def devices_move(
    device_id: DeviceId,
    school: Annotated[
        str, typer.Option(help="The school it moves to.", autocompletion=completion.schools)
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Move a device to another school (central ops only).

    Its stream is closed and its certificate, which names its old school, is refused:
    it enrolls again with a token of its new school. Its room, labels, latest report,
    Wi-Fi association, command results and undelivered commands are dropped."""
    if not yes and not typer.confirm(f"Move {device_id} to school {school}? It is cut off"):
        raise typer.Exit(1)
    with client() as c:
        moved = c.fleet.move(device_id, school)
    if as_json:
        print_json(
            {
                "device_id": moved.device_id,
                "from_school_id": moved.from_school_id,
                "to_school_id": moved.to_school_id,
            }
        )
    else:
        out.print(
            f"{moved.device_id} moved from school {moved.from_school_id} to "
            f"{moved.to_school_id}: it must enroll with a token of school {moved.to_school_id}"
        )


@token_app.command("create")
def token_create(
    school: Annotated[
        str,
        typer.Option(
            help="The school whose devices may enroll with it.", autocompletion=completion.schools
        ),
    ],
    uses: Annotated[int, typer.Option(help="How many devices may enroll with it.", min=1)] = 1,
    expires: Annotated[
        str, typer.Option(help="How long it is valid: 90s, 30m, 12h, 7d (at most 365d).")
    ] = "7d",
    as_json: JsonFlag = False,
) -> None:
    """Create a token and print its secret on stdout. The secret is shown this once; the
    controller keeps only its hash."""
    from common.durations import parse_duration

    try:
        valid = parse_duration(expires)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from None
    with client() as c:
        token, secret = c.fleet.create_enroll_token(school, uses, valid)
    if as_json:
        print_json({**render.token_json(token), "secret": secret})
        return
    out.print(secret)
    err.print(
        f"token {token.token_id} for school {token.school_id}: {token.uses_left} use(s), "
        f"expires {render.iso(token.expires_at)}; the secret is not shown again"
    )


@token_app.command("list")
def token_list(
    school: Annotated[
        str | None,
        typer.Option(help="Only this school's tokens.", autocompletion=completion.schools),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List tokens (never their secrets), newest first."""
    with client() as c:
        tokens = c.fleet.enroll_tokens(school)
        if not tokens:
            require_school(c, school)
    if as_json:
        print_json([render.token_json(t) for t in tokens])
    elif not tokens:
        err.print("no enroll tokens")
    else:
        out.print(render.tokens_table(tokens, time.time()))


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="From `token list`.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a token: no device can enroll with it any more."""
    with client() as c:
        token = c.fleet.revoke_enroll_token(token_id)
    if as_json:
        print_json(render.token_json(token))
    else:
        out.print(f"token {token.token_id} of school {token.school_id} revoked")


@app.command()
def status(
    school: Annotated[
        str | None, typer.Option(help="Only this school.", autocompletion=completion.schools)
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Devices online and offline, per school and kind, and the schools whose measured
    uplink is under the target (100 Mbit/s unless the controller says otherwise)."""
    from cli import render_uplink

    with client() as c:
        got = c.fleet.status(school)
        if not got.counts:
            require_school(c, school)
    if as_json:
        print_json(
            {
                **render.status_json(got.counts, got.computed_at),
                **render_uplink.slow_json(got.uplink_target_mbps, got.slow_uplinks),
            }
        )
        return
    if got.counts:
        out.print(render.status_table(got.counts))
    else:
        err.print("no devices yet")
    if got.slow_uplinks:
        out.print()
        out.print(render_uplink.slow_table(got.uplink_target_mbps, got.slow_uplinks, time.time()))


def run(main: Callable[..., Any] = app) -> None:
    """Console entry point: a CliError is one line on stderr and its exit code."""
    try:
        main(standalone_mode=True)
    except CliError as exc:
        err.print(f"schoolctl: {exc}", markup=False)
        sys.exit(exc.exit_code)
