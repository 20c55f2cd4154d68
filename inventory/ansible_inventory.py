"""The registry as an Ansible inventory: one host per device, grouped by what it is.

Pure: devices in, the two shapes Ansible reads out. :func:`build_inventory` gives the
inventory script protocol's JSON (``--list``), :func:`runner_inventory` the form
ansible-runner takes as ``inventory=``; both come from :func:`plan_inventory`, whose
plan also says who was left out and which group names clashed.

A host is named by its device id. A device without an address cannot be reached,
so it is left out and listed in the plan's ``skipped`` instead.

Group names: ``school_<school>``, ``room_<school>_<room>``, ``kind_<kind>``,
``os_<version>``, ``label_<name>_<value>``, ``status_online``/``status_offline`` (as
the controller judged it when asked) and ``condition_<ok|degraded|critical|unknown>``
(the device's own verdict in its latest report; unknown before one), each character
other than an ASCII letter, digit or ``_`` replaced by ``_``. When different values
would give one name (os ``22.04`` and ``22-04``; label ``a_b=c`` and ``a=b_c``) none
of them gets it: each gets the name followed by ``_`` and the first 8 hex digits of
the SHA-256 of its values, and the clash is listed in ``collisions``. A name still taken after that
(only values chosen to collide do that) gets ``_2``, ``_3``, ... So one group never
holds devices of different values, and a name that would be ambiguous is not made.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from inventory.model import DeviceRecord

# A device with no report yet has no verdict.
NO_CONDITION = "unknown"
# Every host of the inventory: its variables are how to reach them (no generated
# group name is without a prefix, so none can be this).
FLEET_GROUP = "schoolfleet"

_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")
# What a group is for, before it has a name: ("os", ("22.04",)).
GroupKey = tuple[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class SkippedHost:
    """A device left out of the inventory, and why."""

    device_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Collision:
    """Values whose groups would have shared ``name``; each got its own instead."""

    name: str
    # e.g. ("os=22-04", "os=22.04")
    values: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InventoryPlan:
    """Hosts with their variables and the groups they are in, by name, sorted."""

    hostvars: dict[str, dict[str, Any]]
    groups: dict[str, tuple[str, ...]]
    skipped: tuple[SkippedHost, ...] = ()
    collisions: tuple[Collision, ...] = ()

    def warnings(self, named_max: int = 10) -> list[str]:
        """Who was left out and which groups were renamed, a line each (at most
        ``named_max`` devices named in a line, the rest counted)."""
        lines = []
        if self.skipped:
            names = ", ".join(s.device_id for s in self.skipped[:named_max])
            more = len(self.skipped) - named_max
            names += f" and {more} more" if more > 0 else ""
            lines.append(f"{len(self.skipped)} device(s) left out, no address known: {names}")
        lines += [
            f"group {c.name} would mix {', '.join(c.values)}; named {', '.join(c.groups)} instead"
            for c in self.collisions
        ]
        return lines

    def script_inventory(self, fleet_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        """The inventory script protocol's ``--list`` answer, ``_meta.hostvars``
        included (so Ansible never calls ``--host`` once per host). Every host is also
        in the group ``schoolfleet``, whose variables are ``fleet_vars`` (group
        variables, so a user's group_vars and host vars still win over them)."""
        out: dict[str, Any] = {
            "_meta": {"hostvars": self.hostvars},
            "all": {"children": [FLEET_GROUP, *self.groups]},
            FLEET_GROUP: {"hosts": list(self.hostvars), "vars": fleet_vars or {}},
        }
        out.update({name: {"hosts": list(hosts)} for name, hosts in self.groups.items()})
        return out

    def runner_inventory(self) -> dict[str, Any]:
        """The YAML inventory shape, as ansible-runner takes it in ``inventory=``."""
        children: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
            name: {"hosts": {h: {} for h in hosts}} for name, hosts in self.groups.items()
        }
        return {"all": {"hosts": self.hostvars, "children": children}}


def _unsafe(text: str) -> dict[str, str]:
    """Ansible renders Jinja in inventory strings on the controller's side: text a
    device sent is marked so that it stays text (both JSON shapes honour this)."""
    return {"__ansible_unsafe": text}


def _condition(d: DeviceRecord) -> str:
    return d.report.condition.value if d.report is not None else NO_CONDITION


def _hostvars(d: DeviceRecord) -> dict[str, Any]:
    i = d.identity
    return {
        "ansible_host": i.address,
        "sf_device_id": i.device_id,
        "sf_kind": i.kind.value,
        "sf_school": i.school_id,
        "sf_room": i.room_id,
        "sf_os_version": _unsafe((i.os.version if i.os else None) or ""),
        "sf_labels": {name: _unsafe(value) for name, value in i.labels},
        "sf_status": d.status.value,
        "sf_condition": _condition(d),
    }


def _group_keys(d: DeviceRecord) -> list[GroupKey]:
    i = d.identity
    keys: list[GroupKey] = [
        ("school", (i.school_id,)),
        ("kind", (i.kind.value,)),
        ("status", (d.status.value,)),
        ("condition", (_condition(d),)),
    ]
    if i.room_id:
        keys.append(("room", (i.school_id, i.room_id)))
    if i.os is not None and i.os.version:
        keys.append(("os", (i.os.version,)))
    keys += [("label", (name, value)) for name, value in i.labels]
    return keys


def _plain_name(key: GroupKey) -> str:
    kind, values = key
    return "_".join((kind, *(_NOT_NAME.sub("_", v) for v in values)))


def _digest(key: GroupKey) -> str:
    kind, values = key
    return hashlib.sha256("\0".join((kind, *values)).encode()).hexdigest()[:8]


def _show(key: GroupKey) -> str:
    kind, values = key
    if kind == "label":
        return f"label.{values[0]}={values[1]}"
    return f"{kind}={'/'.join(values)}"


def group_names(keys: Iterable[GroupKey]) -> tuple[dict[GroupKey, str], list[Collision]]:
    """A distinct Ansible group name for each key (the rule is the module's docstring)."""
    by_name: dict[str, list[GroupKey]] = defaultdict(list)
    for key in sorted(set(keys)):
        by_name[_plain_name(key)].append(key)
    names = {found[0]: name for name, found in by_name.items() if len(found) == 1}
    # Every plain name is taken, the clashing ones too: none of them is made below.
    taken = set(by_name)
    collisions: list[Collision] = []
    for name, found in sorted(by_name.items()):
        if len(found) == 1:
            continue
        for key in found:
            candidate = base = f"{name}_{_digest(key)}"
            n = 2
            while candidate in taken:
                candidate, n = f"{base}_{n}", n + 1
            taken.add(candidate)
            names[key] = candidate
        collisions.append(
            Collision(name, tuple(_show(k) for k in found), tuple(names[k] for k in found))
        )
    return names, collisions


def plan_inventory(devices: Iterable[DeviceRecord]) -> InventoryPlan:
    """Hosts, their variables and groups; devices without an address are skipped."""
    hostvars: dict[str, dict[str, Any]] = {}
    members: dict[GroupKey, list[str]] = defaultdict(list)
    skipped: list[SkippedHost] = []
    for d in sorted(devices, key=lambda d: d.identity.device_id):
        host = d.identity.device_id
        if not d.identity.address:
            skipped.append(SkippedHost(host, "unreachable: no address"))
            continue
        hostvars[host] = _hostvars(d)
        for key in _group_keys(d):
            members[key].append(host)
    names, collisions = group_names(members)
    groups = {names[key]: tuple(hosts) for key, hosts in members.items()}
    return InventoryPlan(
        hostvars=hostvars,
        groups=dict(sorted(groups.items())),
        skipped=tuple(skipped),
        collisions=tuple(collisions),
    )


def build_inventory(devices: Iterable[DeviceRecord]) -> dict[str, Any]:
    """The inventory script protocol's JSON for ``devices`` (those with an address)."""
    return plan_inventory(devices).script_inventory()


def runner_inventory(devices: Iterable[DeviceRecord]) -> dict[str, Any]:
    """ansible-runner's ``inventory=`` for ``devices`` (those with an address)."""
    return plan_inventory(devices).runner_inventory()
