"""schoolfleet.fleet.registry: the SchoolFleet registry as an Ansible inventory plugin.

It runs the installed ``schoolfleet-inventory --list`` and reads its JSON, rather than
importing SchoolFleet's gRPC client: ansible-playbook forks a worker per host after
reading the inventory, and gRPC's threads and its native library are better kept out
of a process that forks (and out of the memory every worker shares). So this module
needs only Python and Ansible, one code path reads the registry for the script and
the plugin alike, and every failure of that script (a token refused, a controller
unreachable, a bad selector) is this plugin's failure, with the script's one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

DOCUMENTATION = r"""
name: registry
short_description: SchoolFleet's device registry as an inventory
description:
  - Every device the controller knows and you may see, named by its device id and
    reached at the address the controller recorded for it.
  - Groups C(school_*), C(room_*), C(kind_*), C(os_*), C(label_*), C(status_online),
    C(status_offline), C(condition_ok), C(condition_degraded), C(condition_critical),
    C(condition_unknown), and C(schoolfleet) (every host) whose variables give
    C(ansible_user), C(ansible_python_interpreter) and C(ansible_ssh_common_args) from
    the controller, so ssh checks each host key against the controller's known hosts.
  - Text a device sent (its OS version, its labels) is never templated.
  - Any error (a refused token, an unreachable controller) fails the source; set
    C([inventory] unparsed_is_failed = True) so that it fails the run.
  - The file's name must end in C(schoolfleet.yml) or C(schoolfleet.yaml).
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin.
    required: true
    choices: [schoolfleet.fleet.registry]
  select:
    description: Only devices this selector matches, as for rollouts
      (C(school=1234,kind=panel|laptop,label.grade=5)).
    type: str
    env: [{name: SCHOOLFLEET_INVENTORY_SELECT}]
  controller:
    description: The controller's gRPC address, HOST:PORT (default schoolctl's).
    type: str
    env: [{name: SCHOOLCTL_CONTROLLER}]
  ca_cert:
    description: The controller's CA certificate (default schoolctl's). The token is
      C($SCHOOLCTL_TOKEN) or schoolctl's config file's, never this file's.
    type: path
    env: [{name: SCHOOLCTL_CA_CERT}]
  known_hosts_file:
    description: Where to write the controller's host keys of your devices
      (default C(~/.cache/schoolfleet/known_hosts-CONTROLLER)).
    type: path
    env: [{name: SCHOOLFLEET_INVENTORY_KNOWN_HOSTS}]
  executable:
    description: The C(schoolfleet-inventory) program (default the one beside the
      Python running Ansible, then the one on PATH).
    type: path
  timeout:
    description: Seconds to wait for each answer of the controller.
    type: float
    default: 30
"""

EXAMPLES = r"""
# fleet.schoolfleet.yml
plugin: schoolfleet.fleet.registry
select: school=school-1001
keyed_groups:
  - key: sf_kind
    prefix: type
groups:
  needs_care: sf_condition != 'ok'
compose:
  wing: sf_labels.wing | default('none')
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/schoolfleet/ansible
cache_timeout: 300
"""

PROGRAM = "schoolfleet-inventory"
FLEET_GROUP = "schoolfleet"
WARNINGS_VAR = "sf_inventory_warnings"
_SUFFIXES = ("schoolfleet.yml", "schoolfleet.yaml")


def _plain(value: Any) -> Any:
    """The script's JSON with its ``{"__ansible_unsafe": text}`` marks read back as
    text: Ansible 2.19 templates no string an inventory plugin sets (this plugin does
    not set ``trusted_by_default``), so device text stays text."""
    if isinstance(value, Mapping):
        if set(value) == {"__ansible_unsafe"}:
            return str(value["__ansible_unsafe"])
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):  # type: ignore[misc]
    """Hosts, groups and variables from ``schoolfleet-inventory --list``."""

    NAME = "schoolfleet.fleet.registry"

    def verify_file(self, path: str) -> bool:
        return bool(super().verify_file(path)) and path.endswith(_SUFFIXES)

    def _program(self) -> str:
        given = self.get_option("executable")
        if given:
            return str(given)
        beside = os.path.join(os.path.dirname(sys.executable), PROGRAM)
        if os.access(beside, os.X_OK):
            return beside
        found = shutil.which(PROGRAM)
        if found is None:
            raise AnsibleParserError(
                f"{PROGRAM} not found beside {sys.executable} nor on PATH; "
                "install SchoolFleet's CLI or set 'executable'"
            )
        return found

    def _argv(self) -> list[str]:
        argv = [self._program(), "--list", "--timeout", str(self.get_option("timeout"))]
        for option, flag in (
            ("select", "--select"),
            ("controller", "--controller"),
            ("ca_cert", "--ca-cert"),
            ("known_hosts_file", "--known-hosts"),
        ):
            if self.get_option(option):
                argv += [flag, str(self.get_option(option))]
        return argv

    def _fetch(self) -> dict[str, Any]:
        argv = self._argv()
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=4 * float(self.get_option("timeout")) + 30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AnsibleParserError(f"{PROGRAM}: {exc}") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            raise AnsibleParserError(lines[-1] if lines else f"{PROGRAM} exited {done.returncode}")
        try:
            data = json.loads(done.stdout)
        except ValueError as exc:
            raise AnsibleParserError(f"{PROGRAM} answered no JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("_meta"), dict):
            raise AnsibleParserError(f"{PROGRAM} answered JSON without _meta")
        return data

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        key = self.get_cache_key(path)
        use_cache = bool(self.get_option("cache")) and cache
        update_cache = bool(self.get_option("cache")) and not cache
        data = None
        if use_cache:
            try:
                data = self._cache[key]
            except KeyError:
                update_cache = True
            # The cache holds the inventory, the known_hosts file it names is apart.
            if data is not None and not self._known_hosts_present(data):
                data, update_cache = None, True
        if data is None:
            data = self._fetch()
        if update_cache:
            self._cache[key] = data
        self._populate(data)

    @staticmethod
    def _known_hosts_present(data: Mapping[str, Any]) -> bool:
        args = _plain(data.get(FLEET_GROUP, {}).get("vars", {})).get("ansible_ssh_common_args", "")
        files = [a.split("=", 1)[1] for a in args.split() if a.startswith("UserKnownHostsFile=")]
        return all(os.path.exists(f.strip("'")) for f in files)

    def _populate(self, data: Mapping[str, Any]) -> None:
        hostvars = _plain(data["_meta"].get("hostvars", {}))
        fleet_vars = _plain(data.get(FLEET_GROUP, {}).get("vars", {}))
        for line in fleet_vars.get(WARNINGS_VAR, []):
            self.display.warning(str(line))
        for name, body in data.items():
            if name in ("_meta", "all") or not isinstance(body, Mapping):
                continue
            group = self.inventory.add_group(name)
            for host in body.get("hosts", []):
                self.inventory.add_host(host, group=group)
        for name, value in fleet_vars.items():
            self.inventory.set_variable(FLEET_GROUP, name, value)
        strict = self.get_option("strict")
        for host, variables in hostvars.items():
            self.inventory.add_host(host)
            for name, value in variables.items():
                self.inventory.set_variable(host, name, value)
            # What compose, groups and keyed_groups see: the fleet's and the host's.
            seen = {**fleet_vars, **variables}
            self._set_composite_vars(self.get_option("compose"), seen, host, strict)
            self._add_host_to_composed_groups(self.get_option("groups"), seen, host, strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), seen, host, strict)
