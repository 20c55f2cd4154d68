"""``schoolfleet-controller``: the controller's command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from common.errors import SchoolFleetError
from common.logs import setup_logging
from controller import settings as controller_settings
from controller.commands.ca import ca_app
from controller.commands.options import Config, Database, DataDir, one_line_errors
from controller.commands.store import store_app
from inventory.people import Role

if TYPE_CHECKING:
    from controller.enroll.pki import CaFiles

log = logging.getLogger("controller")

DEFAULT_DATA_DIR = Path("/var/lib/schoolfleet")

app = typer.Typer(
    help="The SchoolFleet controller: keeps the fleet's state and talks to every agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


users_app = typer.Typer(
    help="People's access, made on the controller's own machine (the first central-ops).",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")
app.add_typer(ca_app, name="ca")
app.add_typer(store_app, name="store")
# Who the audit log names for users made on the controller's machine.
LOCAL_ACTOR = "controller-host"


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
        from controller.datadir import lock as data_lock

        data_lock.hold_created(settings.data_dir)
        asyncio.run(controller_serve(settings))
    except SchoolFleetError as exc:
        print(f"schoolfleet-controller: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


def _exit_stopped() -> None:
    """Exits at once after a clean stop: everything acked is stored, every stream's end
    recorded and the store closed.

    Called from inside the event loop, before it runs again: stream handlers the
    shutdown's grace did not see end never run on the closed pools and store, and
    neither asyncio nor the interpreter unwinds what gRPC holds for thousands of
    streams one by one (seconds of a 10,000-stream shutdown, docs/benchmarks.md).
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command()
def init(
    data_dir: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            show_default=False,
            help="The controller's data directory (default /var/lib/schoolfleet); "
            "the CA and the server's key and certificate go in DIR/pki.",
        ),
    ] = DEFAULT_DATA_DIR,
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="A DNS name agents reach the controller by; repeat for more.",
        ),
    ] = None,
    address: Annotated[
        list[str] | None,
        typer.Option(
            "--address",
            metavar="IP",
            help="An IP address agents reach the controller at; repeat for more.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing CA: every device must re-enroll."),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print what was created as JSON.")
    ] = False,
) -> None:
    """Create the controller's certificate authority and its TLS server certificate."""
    from controller.datadir.private_files import private_dir
    from controller.enroll import pki

    try:
        private_dir(data_dir.absolute())
        files = pki.init_ca(data_dir.absolute() / "pki", name or [], address or [], force=force)
    except OSError as exc:
        print(f"schoolfleet-controller: data dir {data_dir}: {exc.strerror}", file=sys.stderr)
        raise typer.Exit(2) from None
    except SchoolFleetError as exc:
        print(f"schoolfleet-controller: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    created = _created(files)
    print(json.dumps(created, indent=2) if json_output else _created_text(created))


def _created(files: CaFiles) -> dict[str, Any]:
    from cryptography import x509

    from controller.enroll.pki import fingerprint

    alt_names = files.server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {
        "pki_dir": str(files.directory),
        "ca_key": str(files.ca_key),
        "ca_cert": str(files.ca_cert),
        "server_key": str(files.server_key),
        "server_cert": str(files.server_cert),
        "replaced": files.replaced,
        "ca_subject": files.ca.subject.rfc4514_string(),
        "ca_fingerprint_sha256": fingerprint(files.ca),
        "ca_not_before": files.ca.not_valid_before_utc.isoformat(),
        "ca_not_after": files.ca.not_valid_after_utc.isoformat(),
        "server_names": alt_names.value.get_values_for_type(x509.DNSName),
        "server_addresses": [str(ip) for ip in alt_names.value.get_values_for_type(x509.IPAddress)],
        "server_not_after": files.server.not_valid_after_utc.isoformat(),
    }


def _created_text(created: dict[str, Any]) -> str:
    def day(iso: str) -> str:
        return iso.replace("T", " ").removesuffix("+00:00")[:16] + " UTC"

    for_whom = [f"DNS:{n}" for n in created["server_names"]]
    for_whom += [f"IP:{a}" for a in created["server_addresses"]]
    verb = "Replaced" if created["replaced"] else "Created"
    files = [
        (created["ca_key"], "CA private key (0600): never leaves this machine"),
        (created["ca_cert"], "CA certificate (0644): what devices trust"),
        (created["server_key"], "server private key (0600)"),
        (created["server_cert"], f"server certificate (0644) for {', '.join(for_whom)}"),
    ]
    width = max(len(path) for path, _ in files)
    lines = [
        f"{verb} the controller's certificate authority in {created['pki_dir']}:",
        *(f"  {path:<{width}}  {what}" for path, what in files),
        f"CA: {created['ca_subject']}",
        f"CA fingerprint (SHA-256): {created['ca_fingerprint_sha256']}",
        f"CA valid from {day(created['ca_not_before'])} until {day(created['ca_not_after'])}",
        f"Server certificate valid until {day(created['server_not_after'])}",
    ]
    if created["replaced"]:
        lines.append("Every device enrolled with the old CA must enroll again.")
    return "\n".join(lines)


@app.command()
def backup(
    to: Annotated[
        Path,
        typer.Option(
            "--to", metavar="FILE", help="The archive to write (0600; never overwritten)."
        ),
    ],
    config: Config = controller_settings.DEFAULT_CONFIG,
    database: Database = None,
    data_dir: DataDir = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON.")
    ] = False,
) -> None:
    """Write a consistent copy of the store, the CA (with its key) and the SSH files to
    FILE, while the controller runs."""
    import time

    from controller.backup.archive import take_backup
    from controller.store import sqlite_path

    with one_line_errors(to):
        settings = controller_settings.load(config, {"database": database, "data_dir": data_dir})
        manifest = take_backup(sqlite_path(settings.database), settings.data_dir, to, time.time())
    if json_output:
        print(manifest.to_json().decode())
    else:
        size = to.stat().st_size
        print(
            f"backup written to {to} ({size} bytes, {len(manifest.members)} files, "
            f"store schema {manifest.schema_version}); it holds the CA's key: keep it as safe"
        )


@app.command()
def restore(
    from_: Annotated[
        Path, typer.Option("--from", metavar="FILE", help="An archive made by `backup`.")
    ],
    config: Config = controller_settings.DEFAULT_CONFIG,
    database: Database = None,
    data_dir: DataDir = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace what the data folder holds (kept aside in it)."),
    ] = False,
) -> None:
    """Bring a backup back into a stopped controller's data folder (all of it or nothing)."""
    import time

    from controller.backup.restore import restore_backup
    from controller.store import sqlite_path

    with one_line_errors(from_):
        settings = controller_settings.load(config, {"database": database, "data_dir": data_dir})
        done = restore_backup(
            from_, sqlite_path(settings.database), settings.data_dir, force=force, now=time.time()
        )
    import datetime as dt

    taken = dt.datetime.fromtimestamp(done.manifest.taken_at, dt.UTC)
    print(
        f"restored the backup taken {taken:%Y-%m-%d %H:%M:%S} UTC into {settings.data_dir}"
        f" (store schema {done.manifest.schema_version})"
    )
    if done.replaced_to is not None:
        print(f"what was there before is kept in {done.replaced_to}")
    print(
        "decommissions, token uses and people's revocations made since the backup are not"
        " in it: make them again (docs/operations.md)"
    )


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The person's user name.")],
    role: Annotated[
        Role, typer.Option(help="central-ops (everything), school-it or viewer.")
    ] = Role.CENTRAL_OPS,
    school: Annotated[
        list[str] | None,
        typer.Option("--school", metavar="ID", help="A school the user may see; repeat."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="How long the token is valid: 12h, 90d; default never.")
    ] = None,
    config: Annotated[
        Path, typer.Option(help="The controller's TOML settings (for its database).")
    ] = controller_settings.DEFAULT_CONFIG,
    database: Annotated[str | None, typer.Option(help="Store URL; overrides the config.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the user as JSON.")] = False,
) -> None:
    """Create a user on the controller's own machine and print their token (shown once).

    This is how the first central-ops user is made; after that, `schoolctl users create`."""
    import time

    from common.durations import parse_duration
    from controller.people import access
    from controller.stores import open_stores
    from inventory.people import AuditEntry, Outcome

    try:
        valid = parse_duration(expires) if expires else 0
        settings = controller_settings.load(config, {"database": database})
        now = time.time()
        user = access.new_user(name, role, school or [], valid, LOCAL_ACTOR, now)
        token = access.mint_token()
        store = open_stores(settings.database)
        try:
            added = store.people.add_user(user, access.hash_token(token))
            outcome = Outcome.OK if added else Outcome.FAILED
            message = f"role {role.value}, schools {','.join(user.schools) or 'all'}"
            store.people.append_audit(
                AuditEntry(0, now, LOCAL_ACTOR, "users.create", name, "", outcome, message, "local")
            )
        finally:
            store.close()
    except (SchoolFleetError, ValueError) as exc:
        print(f"schoolfleet-controller: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    if not added:
        print(
            f"schoolfleet-controller: user {name!r} exists; revoke it first "
            "(schoolctl users revoke) to give the name a new token",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    if json_output:
        print(
            json.dumps({"name": name, "role": role.value, "schools": user.schools, "token": token})
        )
    else:
        print(token)
        print(
            f"user {name} ({role.value}) created; the token is not shown again. "
            "Give it to them for 'schoolctl login'.",
            file=sys.stderr,
        )


async def controller_serve(settings: controller_settings.ControllerSettings) -> None:
    """Imported late: the gRPC stack is only needed when serving."""
    from controller.server import serve as run_server

    await run_server(settings)
    _exit_stopped()


def run() -> None:
    """Console entry point."""
    app()
