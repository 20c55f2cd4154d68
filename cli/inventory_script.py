"""``schoolfleet-inventory``: the controller's registry as an Ansible inventory script.

``ansible-playbook -i $(which schoolfleet-inventory) site.yml`` runs it with
``--list`` (and, for old Ansibles, ``--host NAME``). Ansible passes no other
arguments, so everything else also comes from the environment: the controller, CA
and token as schoolctl reads them (its flags' variables, then its config file), and
the selection from SCHOOLFLEET_INVENTORY_SELECT.

Besides the hosts, ``--list`` gives the group ``schoolfleet`` (every host) what a run
needs to reach them as the controller's rollouts do: ``ansible_user`` and
``ansible_python_interpreter`` (its rollout settings) and ``ansible_ssh_common_args``
that check host keys against a known_hosts file this script writes from the
controller's (``--known-hosts``).

Warnings (devices left out, renamed groups, a token sent unencrypted) are in that
group's ``sf_inventory_warnings``, and on stderr only when it is a terminal:
Ansible shows any stderr of an inventory script as an error, even when it worked.
The collection's ``schoolfleet.fleet.registry`` plugin shows them as warnings.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from cli.client.values import AnsibleAccess
from cli.errors import CliError, NotFound
from cli.options import DEFAULT_CONTROLLER, Options, client, print_json
from inventory.ansible_inventory import plan_inventory
from inventory.model import DeviceRecord
from inventory.rollouts import RolloutInputError, Selector, parse_selector

PROG = "schoolfleet-inventory"
# The variables behind schoolctl's --controller and --ca-cert (cli/main.py).
ENV_CONTROLLER = "SCHOOLCTL_CONTROLLER"
ENV_CA_CERT = "SCHOOLCTL_CA_CERT"
ENV_SELECT = "SCHOOLFLEET_INVENTORY_SELECT"
ENV_KNOWN_HOSTS = "SCHOOLFLEET_INVENTORY_KNOWN_HOSTS"
WARNINGS_VAR = "sf_inventory_warnings"


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (and exit 2), not usage and a message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="The SchoolFleet registry as an Ansible inventory (the inventory "
        "script protocol): hosts are device ids, reached at the address the controller "
        "recorded; groups by school, room, kind, OS version and label. Use it as "
        f"'ansible-playbook -i $(command -v {PROG}) ...'.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="every host and group, as JSON")
    what.add_argument("--host", metavar="NAME", help="one host's variables, as JSON")
    parser.add_argument(
        "--select",
        default=os.environ.get(ENV_SELECT) or None,
        help="only devices this selector matches, as for rollouts: "
        "school=1234,kind=panel|laptop,label.grade=5 "
        f"(default ${ENV_SELECT})",
    )
    parser.add_argument(
        "--controller",
        default=os.environ.get(ENV_CONTROLLER) or None,
        help=f"controller gRPC address, HOST:PORT (default ${ENV_CONTROLLER}, then "
        f"schoolctl's config file, then {DEFAULT_CONTROLLER})",
    )
    parser.add_argument(
        "--ca-cert",
        type=Path,
        default=os.environ.get(ENV_CA_CERT) or None,
        help=f"the controller's CA certificate (default ${ENV_CA_CERT}, then schoolctl's "
        "config file); the token is $SCHOOLCTL_TOKEN or the config file's",
    )
    parser.add_argument(
        "--known-hosts",
        type=Path,
        default=os.environ.get(ENV_KNOWN_HOSTS) or None,
        help="where to write the controller's host keys of your devices, which the hosts'"
        f" ssh then checks (default ${ENV_KNOWN_HOSTS}, then "
        "~/.cache/schoolfleet/known_hosts-CONTROLLER)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer"
    )
    return parser


def _selected(devices: Iterable[DeviceRecord], selector: Selector | None) -> list[DeviceRecord]:
    if selector is None:
        return list(devices)
    return [
        d
        for d in devices
        if selector.matches(
            device_id=d.identity.device_id,
            school_id=d.identity.school_id,
            room_id=d.identity.room_id,
            kind=d.identity.kind,
            os_version=d.identity.os.version if d.identity.os else None,
            labels=dict(d.identity.labels),
        )
    ]


def default_known_hosts(controller: str) -> Path:
    """~/.cache/schoolfleet/known_hosts-CONTROLLER ($XDG_CACHE_HOME first)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "schoolfleet" / f"known_hosts-{re.sub(r'[^A-Za-z0-9.-]', '_', controller)}"


def _write_known_hosts(path: Path, lines: Iterable[str]) -> None:
    """Replaces ``path`` at once, so a run never reads half a file."""
    text = "".join(f"{line}\n" for line in lines)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"--known-hosts {path}: cannot write it ({exc.strerror})") from None


def connection_vars(access: AnsibleAccess, known_hosts: Path) -> dict[str, object]:
    """The ``schoolfleet`` group's connection variables: the controller's settings, and ssh
    checking host keys against ``known_hosts`` only, as the controller's rollouts do."""
    q = shlex.quote
    ssh_args = (
        f"-o UserKnownHostsFile={q(str(known_hosts))} -o GlobalKnownHostsFile=/dev/null"
        " -o StrictHostKeyChecking=yes"
    )
    return {
        "ansible_user": access.ssh_user,
        "ansible_python_interpreter": access.python_interpreter,
        # A path from this machine's environment: text, never a template.
        "ansible_ssh_common_args": {"__ansible_unsafe": ssh_args},
    }


def _main(args: argparse.Namespace) -> None:
    selector = parse_selector(args.select) if args.select else None
    Options.controller = args.controller
    Options.ca_cert = args.ca_cert
    Options.timeout = args.timeout
    warnings: list[str] = []
    with client(warn=warnings.append) as c:
        if args.host is None:
            plan = plan_inventory(_selected(c.fleet.devices(), selector))
            access = c.fleet.ansible_access()
            known_hosts = args.known_hosts or default_known_hosts(c.address)
            _write_known_hosts(known_hosts, access.known_hosts)
            warnings += [f"{PROG}: {line}" for line in plan.warnings()]
            if sys.stderr.isatty():
                for line in warnings:
                    print(line, file=sys.stderr)
            fleet_vars = connection_vars(access, known_hosts) | {WARNINGS_VAR: warnings}
            print_json(plan.script_inventory(fleet_vars))
            return
        try:
            devices = [c.fleet.device(args.host)]
        except NotFound:
            devices = []
    # The protocol's answer for a host it does not know is no variables.
    hostvars = plan_inventory(_selected(devices, selector)).hostvars
    print_json(hostvars.get(args.host, {}))


def run(argv: list[str] | None = None) -> None:
    """Console entry point: a mistake or an unreachable controller is one line and a
    non-zero exit (2: bad arguments; see cli/errors.py for the others)."""
    args = _parser().parse_args(argv)
    if args.timeout <= 0:
        _parser().error("--timeout must be positive")
    try:
        _main(args)
    except RolloutInputError as exc:
        print(f"{PROG}: --select: {exc}", file=sys.stderr)
        sys.exit(2)
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
