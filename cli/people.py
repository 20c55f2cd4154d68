"""schoolctl's people commands: login, whoami, users (central ops) and the audit log."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from cli import render_people
from cli.config import CliConfig, config_path, write_config
from cli.errors import CliError
from cli.groups import command_group
from cli.options import DEFAULT_CONTROLLER, JsonFlag, Options, client, config, err, out, print_json
from inventory.people import AuditQuery, Outcome, Role

users_app = command_group("People's access to the controller (central-ops only).")


def _read_token() -> str:
    if sys.stdin.isatty():
        token: str = typer.prompt("Token", hide_input=True)
    else:
        token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise CliError("no token given: paste the token central ops gave you")
    return token


def login(as_json: JsonFlag = False) -> None:
    """Check your token with the controller and keep it in your config file.

    The controller's address and CA (--controller, --ca-cert) are kept with it, in a
    file only you can read (mode 0600). The token is read from the terminal, hidden,
    or from stdin: `schoolctl login < token.txt`."""
    import os

    token = _read_token()
    with client(token) as c:
        user = c.people.whoami()
        address = c.address
    saved = config()
    ca = Options.ca_cert or saved.ca_cert
    path = config_path(os.environ)
    write_config(path, CliConfig(address, ca.absolute() if ca else None, token))
    if as_json:
        print_json({**render_people.user_json(user), "controller": address, "config": str(path)})
        return
    schools = ", ".join(user.schools) or "all schools"
    out.print(f"logged in to {address} as {user.name} ({user.role.value}; {schools})")
    err.print(f"token kept in {path} (mode 0600)")


def logout() -> None:
    """Forget the token kept in your config file.

    The controller still accepts it until central ops revoke it."""
    import os

    saved = config()
    path = config_path(os.environ)
    write_config(path, CliConfig(saved.controller, saved.ca_cert, None))
    out.print(f"token removed from {path}")


def whoami(as_json: JsonFlag = False) -> None:
    """Who the controller takes you for: your name, role and schools."""
    with client() as c:
        user = c.people.whoami()
        address = c.address
    if as_json:
        print_json({**render_people.user_json(user), "controller": address})
    else:
        schools = ", ".join(user.schools) or "all schools"
        out.print(f"{user.name} ({user.role.value}; {schools}) at {address}")


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The person's user name.")],
    role: Annotated[Role, typer.Option(help="central-ops, school-it or viewer.")],
    school: Annotated[
        list[str] | None,
        typer.Option(
            "--school",
            metavar="ID",
            help="A school they may see (and, for school-it, change); repeat. "
            "None: every school (central-ops, or a city-wide viewer).",
        ),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="How long the token is valid: 12h, 90d; default never.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a user and print their token on stdout, this once.

    The controller keeps only its hash. They run `schoolctl login` with it."""
    from common.durations import parse_duration

    try:
        valid = parse_duration(expires) if expires else 0
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from None
    with client() as c:
        user, token = c.people.create_user(name, role, school or [], valid)
    if as_json:
        print_json({**render_people.user_json(user), "token": token})
        return
    out.print(token)
    err.print(f"user {user.name} ({user.role.value}) created; the token is not shown again")


@users_app.command("list")
def users_list(as_json: JsonFlag = False) -> None:
    """List users (never their tokens)."""
    with client() as c:
        users = c.people.users()
    if as_json:
        print_json([render_people.user_json(u) for u in users])
    elif not users:
        err.print("no users")
    else:
        out.print(render_people.users_table(users, time.time()))


@users_app.command("revoke")
def users_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user's name.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a user's token: their next call is refused."""
    with client() as c:
        user = c.people.revoke_user(name)
    if as_json:
        print_json(render_people.user_json(user))
    else:
        out.print(f"user {user.name} revoked")


def audit(
    actor: Annotated[str | None, typer.Option(help="Only this user's entries.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. devices.decommission.")
    ] = None,
    target: Annotated[str | None, typer.Option(help="Only this device, token or user.")] = None,
    school: Annotated[str | None, typer.Option(help="Only this school's entries.")] = None,
    outcome: Annotated[Outcome | None, typer.Option(help="Only ok, denied or failed.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only entries this recent: 30m, 12h, 7d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many entries.", min=1)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Show the audit log: changes made, and attempts refused, newest first.

    Each entry says who, when, what, which target and school, the outcome and the
    message the caller got. Central ops see every entry; others their schools' and
    their own."""
    from common.durations import parse_duration

    when = None
    if since is not None:
        try:
            when = time.time() - parse_duration(since)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from None
    query = AuditQuery(
        actor=actor or None,
        action=action or None,
        target=target or None,
        school_id=school or None,
        outcome=outcome,
        since=when,
        limit=limit,
    )
    with client() as c:
        try:
            entries = c.people.audit(query)
        except ValueError as exc:
            # A --since before the year 1 is no protobuf Timestamp (the client says so).
            raise typer.BadParameter(str(exc), param_hint="--since") from None
    if as_json:
        print_json([render_people.audit_json(e) for e in entries])
    elif not entries:
        err.print("no audit entries match")
    else:
        out.print(render_people.audit_table(entries))


def register(app: typer.Typer) -> None:
    """Adds the people commands to schoolctl."""
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.command()(audit)
    app.add_typer(users_app, name="users")


__all__ = ["DEFAULT_CONTROLLER", "register"]
