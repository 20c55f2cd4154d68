"""Plain Ansible on the registry, as an Ansible user runs it: the collection's inventory
plugin and the inventory script, with the shipped ansible.cfg, against real SSH hosts in
network namespaces whose real agents registered their addresses. Host keys are checked
against the controller's known hosts; a refused token fails the run; warnings are
warnings; offline devices are grouped, and rollouts leave them out unless asked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ansible_user import ansible_work_dir, ensure_ansible_user, readable_playbooks
from tests.netns import needs_root
from tests.procs import BIN, Agent, Controller, Result, schoolctl, wait_until
from tests.ssh_hosts import SshHost, ssh_hosts, stop_control_masters

pytestmark = [pytest.mark.e2e, needs_root]

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CFG = ROOT / "deploy" / "ansible" / "ansible.cfg"
PING_PLAY = """\
- name: Reach every host
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""
# A device whose agent registered an address and then went away.
GONE = "panel-gone"
GONE_ADDRESS = "198.19.200.18"


@dataclass
class Lab:
    controller: Controller
    hosts: list[SshHost]
    work: Path

    def env(self, token: str | None = None) -> dict[str, str]:
        """A user's shell: schoolctl's variables, the shipped ansible.cfg, Ansible's
        files under the test's folder, and their own key for the devices."""
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        return {
            **os.environ,
            "SCHOOLCTL_CONFIG": os.devnull,
            "SCHOOLCTL_CONTROLLER": self.controller.address,
            "SCHOOLCTL_TOKEN": self.controller.admin_token if token is None else token,
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "ANSIBLE_HOME": str(home / ".ansible"),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_CONFIG": str(SHIPPED_CFG),
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.hosts[0].key_file),
            "ANSIBLE_FORCE_COLOR": "0",
            "NO_COLOR": "1",
        }

    def plugin_source(self) -> Path:
        source = self.work / "fleet.schoolfleet.yml"
        source.write_text(
            "plugin: schoolfleet.fleet.registry\n"
            "keyed_groups:\n  - key: sf_room\n    prefix: in_room\n"
            "groups:\n  healthy: sf_condition == 'ok'\n"
            "compose:\n  where: sf_school ~ '/' ~ sf_room\n"
        )
        return source


def ansible(argv: list[str], env: dict[str, str], timeout: float = 120) -> Result:
    """An Ansible command with its own ssh control folder (no connection is reused
    between runs, so every run checks host keys again); its masters stopped after."""
    control = Path(tempfile.mkdtemp(prefix="sfc-", dir="/tmp"))
    try:
        done = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**env, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control)},
        )
        return Result(done.returncode, done.stdout, done.stderr)
    finally:
        stop_control_masters(control)
        shutil.rmtree(control, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("ansible-inventory")
    source = work / "playbooks"
    source.mkdir()
    (source / "ping.yml").write_text(PING_PLAY)
    ensure_ansible_user()
    with (
        readable_playbooks(source) as playbooks,
        ansible_work_dir() as ansible_dir,
        ssh_hosts(2) as hosts,
    ):
        known_hosts = work / "controller-known_hosts"
        shutil.copy(hosts[0].known_hosts, known_hosts)
        controller = Controller(
            work,
            host=hosts[0].gateway,
            env={
                "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
                "SCHOOLFLEET_CONTROLLER_DATA_DIR": str(work / "data"),
                "SCHOOLFLEET_CONTROLLER_PLAYBOOKS_DIR": str(playbooks),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_WORK_DIR": str(ansible_dir),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_SSH_KEY": str(hosts[0].key_file),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_KNOWN_HOSTS": str(known_hosts),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_PYTHON": "/usr/bin/python3",
            },
        )
        agents: list[Agent] = []
        try:
            controller.start()
            for i, host in enumerate(hosts):
                where = f"{host.gateway}:{controller.grpc_port}"
                agent = Agent(work, host.name, "panel", "s1", f"r{i}", where, netns=host.namespace)
                agents.append(agent.start())
            gone = Agent(
                work,
                GONE,
                "panel",
                "s1",
                "r9",
                controller.address,
                {"management_address": GONE_ADDRESS},
            )
            agents.append(gone.start())

            def listed() -> dict[str, dict[str, Any]] | None:
                got = schoolctl(controller.address, "devices", "list", "--json")
                devices = {d["device_id"]: d for d in got.json()} if got.code == 0 else {}
                ready = [d for d in devices.values() if d.get("address")]
                return devices if len(ready) == 3 else None

            wait_until(listed, 60, "every agent registered with its address")
            gone.stop()
            wait_until(
                lambda: (listed() or {}).get(GONE, {}).get("status") == "offline" or None,
                30,
                f"{GONE} offline",
            )
            yield Lab(controller, hosts, work)
        finally:
            for agent in agents:
                agent.stop()
            controller.stop()


def _pongs(out: str) -> dict[str, str]:
    """host -> SUCCESS | UNREACHABLE | FAILED from `ansible -m ping`'s lines."""
    found = {}
    for line in out.splitlines():
        name, sep, rest = line.partition(" | ")
        if sep:
            found[name] = rest.split(" ", 1)[0].rstrip("!")
    return found


def test_ping_reaches_every_online_host_with_keys_checked_through_plugin_and_script(
    lab: Lab,
) -> None:
    env = lab.env()
    for source in (str(lab.plugin_source()), str(BIN / "schoolfleet-inventory")):
        done = ansible(["ansible", "status_online", "-i", source, "-m", "ping"], env)
        assert done.code == 0, (source, done)
        assert _pongs(done.out) == {"host-0": "SUCCESS", "host-1": "SUCCESS"}, done.out
        # The controller's user and Python: no interpreter discovery, no warning of it.
        assert "interpreter" not in done.err.lower(), done.err
        assert "[ERROR]" not in done.err, done.err
    # The plugin's warnings are warnings (the lab's controller has no TLS).
    plugin = ansible(
        ["ansible", "status_online", "-i", str(lab.plugin_source()), "-m", "ping"], env
    )
    warned = [line for line in plugin.err.splitlines() if line.startswith("[WARNING]")]
    assert warned == [
        "[WARNING]: schoolctl: warning: no --ca-cert: your token goes to "
        f"{lab.controller.address} unencrypted"
    ], plugin.err
    # And a playbook run, as `ansible-playbook -i` with the plugin.
    play = lab.work / "ping-play.yml"
    play.write_text(PING_PLAY)
    run = ansible(
        ["ansible-playbook", "-i", str(lab.plugin_source()), "-l", "status_online", str(play)], env
    )
    assert run.code == 0, run
    assert "host-0                     : ok=1" in run.out and "host-1" in run.out, run.out


def test_a_host_whose_key_changed_is_refused(lab: Lab) -> None:
    known = Path(lab.controller.env["SCHOOLFLEET_CONTROLLER_ROLLOUT_KNOWN_HOSTS"])
    saved = known.read_text()
    other = lab.hosts[0].host_key
    # host-1 now presents a key the controller does not know for its address.
    known.write_text(
        "".join(f"{h.address} {other if h is lab.hosts[1] else h.host_key}\n" for h in lab.hosts)
    )
    try:
        for source in (str(lab.plugin_source()), str(BIN / "schoolfleet-inventory")):
            done = ansible(["ansible", "status_online", "-i", source, "-m", "ping"], lab.env())
            assert done.code != 0, done
            assert _pongs(done.out) == {"host-0": "SUCCESS", "host-1": "UNREACHABLE"}, done.out
            assert "Host key verification failed" in done.out, done.out
    finally:
        known.write_text(saved)


def test_a_refused_token_fails_the_run_for_plugin_and_script(lab: Lab) -> None:
    play = lab.work / "bad-token-play.yml"
    play.write_text(PING_PLAY)
    env = lab.env(token="sfu_not_a_token")  # noqa: S106 (a token nobody has)
    for source in (str(lab.plugin_source()), str(BIN / "schoolfleet-inventory")):
        done = ansible(["ansible-playbook", "-i", source, str(play)], env)
        assert done.code != 0, (source, done)
        assert "did not accept your token" in done.err, (source, done.err)
        assert "PLAY RECAP" not in done.out, done.out
    # With Ansible's own defaults the same run "succeeds" on no hosts: what the shipped
    # configuration is for.
    defaults = lab.work / "defaults.cfg"
    defaults.write_text(f"[defaults]\ncollections_path = {ROOT}\n")
    plain = ansible(
        ["ansible-playbook", "-i", str(BIN / "schoolfleet-inventory"), str(play)],
        {**env, "ANSIBLE_CONFIG": str(defaults)},
    )
    assert plain.code == 0, plain


def test_groups_vars_and_warnings_reach_ansible_inventory(lab: Lab) -> None:
    env = lab.env()
    seen = ansible(["ansible-inventory", "-i", str(lab.plugin_source()), "--list"], env)
    assert seen.code == 0, seen
    inv = json.loads(seen.out)
    assert inv["status_online"]["hosts"] == ["host-0", "host-1"]
    assert inv["status_offline"]["hosts"] == [GONE]
    assert sorted(inv["schoolfleet"]["hosts"]) == ["host-0", "host-1", GONE]
    # keyed_groups, groups and compose, as with any constructed inventory.
    assert inv["in_room_r0"]["hosts"] == ["host-0"]
    hostvars = inv["_meta"]["hostvars"]
    # Ansible templates no string the plugin set (nor one composed from them), and
    # shows each marked unsafe.
    assert hostvars["host-1"]["where"] == {"__ansible_unsafe": "s1/r1"}
    assert hostvars[GONE]["sf_status"] == {"__ansible_unsafe": "offline"}
    assert hostvars["host-0"]["ansible_host"] == {"__ansible_unsafe": lab.hosts[0].address}
    # The script: the same groups; its warnings are a variable, and nothing on stderr
    # for Ansible to show as an error.
    script = ansible(["ansible-inventory", "-i", str(BIN / "schoolfleet-inventory"), "--list"], env)
    assert script.code == 0, script
    assert "[ERROR]" not in script.err and "[WARNING]" not in script.err, script.err
    listed = json.loads(script.out)
    assert listed["status_offline"]["hosts"] == [GONE]
    fleet_vars = listed["_meta"]["hostvars"]["host-0"]
    assert fleet_vars["ansible_user"] == "root"
    assert fleet_vars["ansible_python_interpreter"] == "/usr/bin/python3"
    ssh_args = fleet_vars["ansible_ssh_common_args"]["__ansible_unsafe"]
    assert "-o StrictHostKeyChecking=yes" in ssh_args
    assert "-o GlobalKnownHostsFile=/dev/null" in ssh_args
    assert fleet_vars["sf_inventory_warnings"] == [
        f"schoolctl: warning: no --ca-cert: your token goes to {lab.controller.address} unencrypted"
    ]


def test_rollouts_leave_offline_devices_out_unless_asked(lab: Lab) -> None:
    address = lab.controller.address
    dry = schoolctl(
        address, "rollout", "start", "ping.yml", "--select", "school=s1", "--dry-run", "--json"
    )
    assert dry.code == 0, dry
    assert [h["device_id"] for h in dry.json()["hosts"]] == ["host-0", "host-1"]
    assert dry.json()["offline_skipped"] == [GONE]
    wider = schoolctl(
        address,
        "rollout",
        "start",
        "ping.yml",
        "--select",
        "school=s1",
        "--dry-run",
        "--include-offline",
        "--json",
    )
    assert wider.code == 0, wider
    assert [h["device_id"] for h in wider.json()["hosts"]] == ["host-0", "host-1", GONE]
    assert wider.json()["offline_skipped"] == []
    only_gone = schoolctl(address, "rollout", "start", "ping.yml", "--select", f"device={GONE}")
    assert only_gone.code == 2, only_gone
    assert "matches 1 device(s), all offline: add --include-offline" in only_gone.err

    started = schoolctl(address, "rollout", "start", "ping.yml", "--select", "school=s1")
    assert started.code == 0, started
    assert f"not reached: 1 offline at the start: {GONE}" in started.out
    rollout_id = started.out.split("rollout ", 1)[1].split(" ", 1)[0]

    def finished() -> dict[str, Any] | None:
        got = schoolctl(address, "rollout", "status", rollout_id, "--json")
        info: dict[str, Any] = got.json()
        return info if info["final"] else None

    info = wait_until(finished, 120, f"rollout {rollout_id} finished")
    # The device left out never got the change: done, with a host not reached.
    assert info["state"] == "done-unreached", info
    assert "1 host(s) not reached (1 offline at the start)" in info["reason"]
    assert {h["device_id"]: h["outcome"] for h in info["hosts"]} == {
        "host-0": "ok",
        "host-1": "ok",
    }
    assert (info["offline_skipped"], info["offline_skipped_count"]) == ([GONE], 1)
    shown = schoolctl(address, "rollout", "status", rollout_id)
    assert shown.code == 7, shown  # not every device has the change
    assert f"not reached  1 offline at the start: {GONE}" in shown.out, shown.out
    listed = schoolctl(address, "rollout", "list", "--json").json()
    assert [r["offline_skipped_count"] for r in listed if str(r["rollout_id"]) == rollout_id] == [1]


def test_the_plugin_caches_and_a_scoped_user_gets_only_their_keys(lab: Lab) -> None:
    cached = lab.work / "cached.schoolfleet.yml"
    cache_dir = lab.work / "inventory-cache"
    cached.write_text(
        "plugin: schoolfleet.fleet.registry\ncache: true\n"
        f"cache_plugin: ansible.builtin.jsonfile\ncache_connection: {cache_dir}\n"
        "cache_timeout: 300\n"
    )
    listing = ["ansible-inventory", "-i", str(cached), "--list"]
    first = ansible(listing, lab.env())
    assert first.code == 0, first
    # Read from the cache: the controller is not asked (a refused token would fail).
    again = ansible(listing, lab.env(token="sfu_not_a_token"))  # noqa: S106
    assert again.code == 0, again
    assert json.loads(again.out)["status_online"]["hosts"] == ["host-0", "host-1"]
    flushed = ansible([*listing, "--flush-cache"], lab.env(token="sfu_not_a_token"))  # noqa: S106
    assert flushed.code != 0 and "did not accept your token" in flushed.err, flushed

    # A school's IT user of another school: no hosts, and no host key of these.
    other = lab.controller.create_user("it-s2", "school-it", "s2")
    known = lab.work / "it-s2-known_hosts"
    env = {**lab.env(token=other.token), "SCHOOLFLEET_INVENTORY_KNOWN_HOSTS": str(known)}
    theirs = ansible(["ansible-inventory", "-i", str(BIN / "schoolfleet-inventory"), "--list"], env)
    assert theirs.code == 0, theirs
    assert json.loads(theirs.out)["_meta"]["hostvars"] == {}
    assert known.read_text() == ""
