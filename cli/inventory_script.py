"""``schoolfleet-inventory``: the controller's registry as an Ansible inventory script.

``ansible-playbook -i $(which schoolfleet-inventory) site.yml`` runs it with
``--list`` (and, for old Ansibles, ``--host NAME``). Ansible passes no other
arguments, so everything else also comes from the environment: the controller, CA
and token as schoolctl reads them (its flags' variables, then its config file), and
the selection from SCHOOLFLEET_INVENTORY_SELECT.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from cli.errors import CliError, NotFound
from cli.options import DEFAULT_CONTROLLER, Options, client, print_json
from inventory.ansible_inventory import InventoryPlan, plan_inventory
from inventory.model import DeviceRecord
from inventory.rollouts import RolloutInputError, Selector, parse_selector

PROG = "schoolfleet-inventory"
# The variables behind schoolctl's --controller and --ca-cert (cli/main.py).
ENV_CONTROLLER = "SCHOOLCTL_CONTROLLER"
ENV_CA_CERT = "SCHOOLCTL_CA_CERT"
ENV_SELECT = "SCHOOLFLEET_INVENTORY_SELECT"
# Devices named in a "left out" line; the rest are counted.
_NAMED_MAX = 10


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


def _warn(plan: InventoryPlan) -> None:
    """Says on stderr who is missing and which groups were renamed (Ansible shows it)."""
    if plan.skipped:
        names = ", ".join(s.device_id for s in plan.skipped[:_NAMED_MAX])
        more = len(plan.skipped) - _NAMED_MAX
        names += f" and {more} more" if more > 0 else ""
        print(
            f"{PROG}: {len(plan.skipped)} device(s) left out, no address known: {names}",
            file=sys.stderr,
        )
    for c in plan.collisions:
        print(
            f"{PROG}: group {c.name} would mix {', '.join(c.values)}; "
            f"named {', '.join(c.groups)} instead",
            file=sys.stderr,
        )


def _main(args: argparse.Namespace) -> None:
    selector = parse_selector(args.select) if args.select else None
    Options.controller = args.controller
    Options.ca_cert = args.ca_cert
    Options.timeout = args.timeout
    with client() as c:
        if args.host is None:
            plan = plan_inventory(_selected(c.devices(), selector))
            _warn(plan)
            print_json(plan.script_inventory())
            return
        try:
            devices = [c.device(args.host)]
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
