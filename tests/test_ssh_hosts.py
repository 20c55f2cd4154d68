"""The SSH test hosts that rollouts are tested on: real sshd in namespaces, private files
per host, and a real ansible-runner run against them."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner
import paramiko
import psutil
import pytest

from tests.netns import ip, ip_json, needs_root
from tests.ssh_hosts import SshHost, is_alive, mount_plan, ssh_hosts, stop_control_masters

VENV_BIN = Path(sys.executable).parent

PLAYBOOK = """\
- name: Mark the test hosts
  hosts: all
  gather_facts: false
  tasks:
    - name: The config folder exists
      ansible.builtin.file:
        path: /etc/schoolfleet
        state: directory
        mode: "0755"
    - name: The marker holds the host's value
      ansible.builtin.copy:
        dest: /etc/schoolfleet/marker
        content: "{{ marker }}\\n"
        mode: "0644"
"""


def _connect(host: SshHost, known_hosts: Path | None = None) -> paramiko.SSHClient:
    """paramiko as the controller will use it: pinned host keys only, RejectPolicy."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or host.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            host.address,
            username=host.user,
            key_filename=str(host.key_file),
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
            banner_timeout=5,
            auth_timeout=5,
        )
    except BaseException:
        client.close()  # a refused key leaves the transport's thread running otherwise
        raise
    return client


def _run(host: SshHost, command: str) -> str:
    client = _connect(host)
    try:
        _, stdout, stderr = client.exec_command(command, timeout=10)
        out = stdout.read().decode()
        code = stdout.channel.recv_exit_status()
        assert code == 0, f"{command!r} on {host.name}: exit {code}: {stderr.read().decode()}"
        return out
    finally:
        client.close()


def _links_and_namespaces() -> set[str]:
    """Every link of the machine's namespace and every named namespace."""
    links = {link["ifname"] for link in ip_json("link")}
    return links | {line.split()[0] for line in ip("netns", "list").splitlines() if line}


def test_the_mount_plan_keeps_every_folder_private(tmp_path: Path) -> None:
    missing = "/etc/sf-test-never-made/sub"
    plan = mount_plan(["/etc/systemd/system", missing], tmp_path)
    # The machine's copy-on-write folders come first; sshd's folder and root's home are
    # private.
    assert plan[:2] == [("overlay", "/run"), ("overlay", "/var/log")]
    assert ("mkdir", "/run/sshd") in plan or ("tmpfs", "/run/sshd") in plan
    assert ("tmpfs", "/root") in plan
    # An existing folder is hidden under an empty tmpfs; a missing one is made inside
    # a copy-on-write view of its nearest existing parent, never on the machine.
    assert ("tmpfs", "/etc/systemd/system") in plan
    assert plan.index(("overlay", "/etc")) < plan.index(("mkdir", missing))
    with pytest.raises(ValueError, match="parent folder must exist"):
        mount_plan(["/sf-test-no-such-top/x"], tmp_path)
    with pytest.raises(ValueError, match="would hide"):
        mount_plan([str(tmp_path.parent)], tmp_path)


@pytest.mark.e2e
@needs_root
def test_hosts_answer_with_the_pinned_host_key_and_run_commands() -> None:
    with ssh_hosts(3) as hosts:
        bridge = ip_json("link", "show", hosts[0].veth)[0]["master"]
        ours = {bridge} | {h.veth for h in hosts} | {h.namespace for h in hosts}
        assert ours <= _links_and_namespaces()
        assert len({h.address for h in hosts}) == 3
        for host in hosts:
            assert ipaddress.ip_address(host.address) in ipaddress.ip_network("198.18.0.0/15")
            assert Path(f"/proc/{host.pid}/exe").resolve() == Path("/usr/sbin/sshd")
            assert _run(host, "echo hi") == "hi\n"
        # Host 0's address with host 1's key pinned: the key is checked, not trusted.
        wrong = hosts[0].workdir / "wrong_known_hosts"
        wrong.write_text(f"{hosts[0].address} {hosts[1].host_key}\n")
        with pytest.raises(paramiko.BadHostKeyException):
            _connect(hosts[0], wrong)
        sshds = [psutil.Process(h.pid) for h in hosts]
    assert not ours & _links_and_namespaces()
    assert not [p.pid for p in sshds if is_alive(p)]


@pytest.mark.e2e
@needs_root
def test_a_file_written_on_one_host_stays_on_that_host() -> None:
    probe = "/etc/schoolfleet/probe"
    assert not Path(probe).exists()
    with ssh_hosts(2) as (one, two):
        _run(one, f"echo written-on-one > {probe}")
        assert one.read_file(probe) == "written-on-one\n"
        assert two.read_file(probe) is None
        assert not Path(probe).exists()
        assert not Path("/etc/schoolfleet").exists() or not os.listdir("/etc/schoolfleet")


@pytest.mark.e2e
@needs_root
def test_a_stopped_host_refuses_connections() -> None:
    with ssh_hosts(2) as (stopped, running):
        stopped.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((stopped.address, 22), timeout=5).close()
        with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
            _connect(stopped)
        assert _run(running, "echo still-here") == "still-here\n"


@dataclass
class HostTally:
    """One host's task outcomes in a run, counted from runner events."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0


@dataclass
class RunResult:
    status: str
    tallies: dict[str, HostTally]
    stats: dict[str, Any]


def _ansible_run(work: Path, hosts: list[SshHost], control_dir: Path) -> RunResult:
    """One ansible-runner run of PLAYBOOK in a fresh private_data_dir."""
    data_dir = work / f"run-{len(list(work.glob('run-*')))}"
    (data_dir / "project").mkdir(parents=True)
    (data_dir / "project" / "site.yml").write_text(PLAYBOOK)
    empty_config = work / "ansible.cfg"
    empty_config.touch()
    inventory = {
        "all": {"hosts": {h.name: {**h.ansible_vars(), "marker": f"m-{h.name}"} for h in hosts}}
    }
    envvars = {
        # ansible-runner starts ansible-playbook by name: the venv's, whatever PATH says.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        # Nothing from ~/.ansible.cfg, /etc/ansible or ~/.ansible on this machine.
        "ANSIBLE_CONFIG": str(empty_config),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        # The host keys are pinned in the inventory's known_hosts: check them.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_NOCOLOR": "1",
    }
    tallies = {h.name: HostTally() for h in hosts}

    def on_event(event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        tally = tallies.get(data.get("host", ""))
        kind = event.get("event")
        if tally is not None and kind == "runner_on_ok":
            tally.ok += 1
            tally.changed += bool(data.get("res", {}).get("changed"))
        elif tally is not None and kind == "runner_on_failed" and not data.get("ignore_errors"):
            tally.failed += 1
        elif tally is not None and kind == "runner_on_unreachable":
            tally.unreachable += 1
        return True

    runner = ansible_runner.run(
        private_data_dir=str(data_dir),
        playbook="site.yml",
        inventory=inventory,
        envvars=envvars,
        forks=5,
        quiet=True,
        suppress_env_files=True,
        event_handler=on_event,
        timeout=120,
    )
    return RunResult(str(runner.status), tallies, dict(runner.stats or {}))


@pytest.mark.e2e
@needs_root
def test_ansible_runner_writes_each_host_its_marker_once(tmp_path: Path) -> None:
    # Short, whatever TMPDIR is: ssh's control socket paths must fit in 108 bytes.
    control_dir = Path(tempfile.mkdtemp(prefix="sfcp-", dir="/tmp"))
    seen: list[psutil.Process] = []
    try:
        with ssh_hosts(3) as hosts:
            seen += [psutil.Process(h.pid) for h in hosts]
            first = _ansible_run(tmp_path, hosts, control_dir)
            assert first.status == "successful", first
            assert {n: (t.ok, t.changed, t.failed) for n, t in first.tallies.items()} == {
                h.name: (2, 1, 0) for h in hosts
            }
            for host in hosts:
                assert host.read_file("/etc/schoolfleet/marker") == f"m-{host.name}\n"
            assert not Path("/etc/schoolfleet/marker").exists()

            again = _ansible_run(tmp_path, hosts, control_dir)
            assert again.status == "successful", again
            assert all(t.changed == 0 and t.ok == 2 for t in again.tallies.values()), again
            assert first.stats["changed"] == {h.name: 1 for h in hosts}
            assert not any(again.stats.get("changed", {}).values()), again.stats

            # ControlPersist keeps a session per host open: stop the masters by socket.
            sessions = [psutil.Process(pid) for h in hosts for pid in h.session_pids()]
            assert sessions
            seen += sessions
            # It also waits until the masters are gone.
            assert len(stop_control_masters(control_dir)) == len(hosts)
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)
    assert not [p.pid for p in seen if is_alive(p)]
