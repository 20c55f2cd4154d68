"""The M OS playbooks in playbooks/: ansible-lint clean, and run twice through
ansible-runner on real SSH hosts (tests/ssh_hosts.py), where the first run changes each
host and writes its own values, the second changes nothing, and this machine's files
stay as they were. The hosts share this machine's kernel and have no systemd: every
run has sf_manage_services false, and updates.yml runs as a simulation that must not
reboot.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner
import psutil
import pytest

from agent.settings import ENV_PREFIX, AgentSettings
from common.settings import load_settings
from tests.netns import needs_root
from tests.ssh_hosts import SshHost, is_alive, ssh_hosts, stop_control_masters
from tests.wheels import build_wheel, copy_tree

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = ROOT / "playbooks"
UNIT = ROOT / "deploy" / "systemd" / "schoolfleet-agent.service"
VENV_BIN = Path(sys.executable).parent
# Where the playbooks write, private to each test host.
PRIVATE_DIRS = (
    "/etc/schoolfleet",
    "/opt/schoolfleet",
    "/var/lib/schoolfleet",
    "/etc/systemd/system",
    "/etc/systemd/timesyncd.conf.d",
    "/home/nobody",
)
# This machine's view of them, which no run may change.
WATCHED = (
    "/etc/schoolfleet",
    "/opt/schoolfleet",
    "/var/lib/schoolfleet",
    "/etc/systemd/system/schoolfleet-agent.service",
    "/etc/systemd/system/schoolfleet-agent.service.d",
    "/etc/systemd/timesyncd.conf.d",
    "/home/nobody",
    "/run/reboot-required",
    "/var/lib/dpkg/status",
)
# Every run: no systemd on the hosts, no apt installs into this machine's /usr, and an
# account that exists here (making one would write this machine's /etc/passwd).
TEST_VARS: dict[str, object] = {
    "sf_manage_services": False,
    "sf_manage_packages": False,
    "sf_agent_manage_user": False,
    "sf_agent_user": "nobody",
    "sf_agent_group": "nogroup",
    "sf_kiosk_user": "nobody",
    "sf_kiosk_group": "nogroup",
    # agent.yml's health check: the hosts' venvs hold the agent without its
    # dependencies, so --once could not run; --version still runs the release's code.
    "sf_agent_health_argv": ["/opt/schoolfleet/venv/bin/schoolfleet-agent", "--version"],
}


@dataclass
class PlayRun:
    """What a run reported: its final status, its runner events and their stats."""

    status: str
    events: list[dict[str, Any]]

    @property
    def stats(self) -> dict[str, Any]:
        """The playbook_on_stats event's data: per-host counts, custom stats."""
        found = [e["event_data"] for e in self.events if e["event"] == "playbook_on_stats"]
        assert len(found) == 1, f"{len(found)} stats events"
        return dict(found[0])

    def changed_tasks(self) -> dict[str, list[str]]:
        """Host -> the tasks that changed it (handlers included)."""
        changed: dict[str, list[str]] = {}
        for e in self.events:
            data = e.get("event_data", {})
            if e["event"] == "runner_on_ok" and data.get("res", {}).get("changed"):
                changed.setdefault(data["host"], []).append(data["task"])
        return changed

    def task_events(self, task: str) -> list[tuple[str, str]]:
        """(event, host) for each outcome of the task named ``task``."""
        return [
            (e["event"], e["event_data"].get("host", ""))
            for e in self.events
            if e.get("event_data", {}).get("task") == task
            and e["event"].startswith("runner_on")
            and e["event"] != "runner_on_start"
        ]


@dataclass
class Fleet:
    """Test hosts, the test's folder for runs, and the runs' ControlPersist folder."""

    hosts: list[SshHost]
    work: Path
    control_dir: Path

    def play(
        self,
        playbook: str,
        host_vars: Mapping[str, Mapping[str, object]],
        extravars: Mapping[str, object],
        cmdline: str = "",
    ) -> PlayRun:
        """One ansible-runner run of ``playbooks/<playbook>`` in a fresh private_data_dir,
        from a copy of playbooks/ and the unit it installs (nothing is written in the tree)."""
        data_dir = self.work / f"run-{len(list(self.work.glob('run-*')))}"
        project = data_dir / "project"
        shutil.copytree(PLAYBOOKS, project / "playbooks")
        shutil.copytree(UNIT.parent, project / "deploy" / "systemd")
        empty_config = self.work / "ansible.cfg"
        empty_config.touch()
        hosts = {h.name: {**h.ansible_vars(), **host_vars.get(h.name, {})} for h in self.hosts}
        envvars = {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            # Nothing from ~/.ansible.cfg, /etc/ansible or ~/.ansible on this machine.
            "ANSIBLE_CONFIG": str(empty_config),
            "ANSIBLE_HOME": str(self.work / "ansible-home"),
            # As the controller's engine runs them.
            "ANSIBLE_GATHERING": "explicit",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_NOCOLOR": "1",
        }
        events: list[dict[str, Any]] = []

        def on_event(event: dict[str, Any]) -> bool:
            events.append(event)
            return True

        runner = ansible_runner.run(
            private_data_dir=str(data_dir),
            playbook=f"playbooks/{playbook}",
            inventory={"all": {"hosts": hosts}},
            extravars={**TEST_VARS, **extravars},
            envvars=envvars,
            cmdline=cmdline or None,
            forks=5,
            quiet=True,
            suppress_env_files=True,
            event_handler=on_event,
            timeout=150,
        )
        return PlayRun(str(runner.status), events)

    def twice(
        self,
        playbook: str,
        host_vars: Mapping[str, Mapping[str, object]],
        extravars: Mapping[str, object],
    ) -> None:
        """Runs ``playbook`` twice: the first changes every host, the second none."""
        first = self.play(playbook, host_vars, extravars)
        assert first.status == "successful", first.stats
        assert sorted(first.changed_tasks()) == sorted(h.name for h in self.hosts)
        again = self.play(playbook, host_vars, extravars)
        assert again.status == "successful", again.stats
        assert again.changed_tasks() == {}
        assert not any(again.stats["changed"].values()), again.stats


@contextmanager
def _fleet(count: int, work: Path, private_dirs: Sequence[str] = PRIVATE_DIRS) -> Iterator[Fleet]:
    """``count`` hosts; the runs' ssh control masters are stopped before the hosts."""
    # Short, whatever TMPDIR is: ssh's control socket paths must fit in 108 bytes.
    control_dir = Path(tempfile.mkdtemp(prefix="sfcp-", dir="/tmp"))
    try:
        with ssh_hosts(count, private_dirs=private_dirs) as hosts:
            try:
                yield Fleet(hosts, work, control_dir)
            finally:
                stop_control_masters(control_dir)
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)


def _on_host(host: SshHost, *argv: str) -> str:
    """Runs ``argv`` in the host's view of the file system (its sshd's mount namespace)."""
    # The host is another machine: a PYTHONPATH this run has (a checkout's tree) would
    # make its Pythons import our code from there instead of what the host installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        ["nsenter", "--target", str(host.pid), "--mount", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert done.returncode == 0, f"{argv} on {host.name}: {done.stderr}"
    return done.stdout


def _file(host: SshHost, path: str) -> str:
    text = host.read_file(path)
    assert text is not None, f"{path} missing on {host.name}"
    return text


def _machine_state() -> dict[str, object]:
    """This machine's view of WATCHED: file bytes, a folder's listing, or None."""
    state: dict[str, object] = {}
    for raw in WATCHED:
        path = Path(raw)
        if path.is_dir():
            state[raw] = sorted(str(p) for p in path.rglob("*"))
        elif path.exists():
            state[raw] = path.read_bytes()
        else:
            state[raw] = None
    return state


def _settings(config: str, env: Mapping[str, str], tmp: Path) -> AgentSettings:
    """The settings the agent reads from ``config`` and its unit's environment."""
    path = tmp / "agent.toml"
    path.write_text(config)
    return load_settings(
        AgentSettings, path=path, env_prefix=ENV_PREFIX, environ=env, required_file=True
    )


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline from a copy of the tree (a build writes
    build/ and *.egg-info next to its sources)."""
    source = copy_tree(tmp_path_factory.mktemp("source"))
    out = build_wheel(source, tmp_path_factory.mktemp("wheelhouse"))
    assert [p.name for p in out.iterdir()] == ["schoolfleet-0.1.0-py3-none-any.whl"]
    return out


def test_ansible_lint_passes_with_the_production_profile(tmp_path: Path) -> None:
    lint = VENV_BIN / "ansible-lint"
    if not lint.exists():
        pytest.skip(f"{lint} is missing: install the dev extras (make dev)")
    config = tmp_path / "ansible.cfg"
    config.touch()
    env = {
        **os.environ,
        # ansible-lint writes under ~/.ansible and ANSIBLE_HOME; nothing from this
        # machine's ansible.cfg.
        "HOME": str(tmp_path),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_CONFIG": str(config),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [str(lint), "--offline", "playbooks/"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stderr


# A quote to escape, as a token might have.
TOKEN = 'tok-"1"'  # noqa: S105 -- not a secret


@pytest.mark.e2e
@pytest.mark.slow
@needs_root
def test_agent_playbook_installs_the_agent_once(tmp_path: Path, wheelhouse: Path) -> None:
    before = _machine_state()
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n")
    extravars = {
        "sf_agent_wheelhouse": str(wheelhouse),
        # The wheelhouse holds the agent only: its dependencies are not installed.
        "sf_agent_pip_extra_args": "--no-deps",
        "sf_controller": "127.0.0.1:7443",
        "sf_ca_cert_src": str(ca),
        "sf_ca_cert": "/etc/schoolfleet/ca.crt",
        "sf_enroll_token": TOKEN,
        "sf_agent_settings": {"heartbeat_interval": 15, "tls": True},
    }
    with _fleet(2, tmp_path) as fleet:
        host_vars = {
            h.name: {"sf_kind": "panel", "sf_school": 1234, "sf_room": f"r{i}"}
            for i, h in enumerate(fleet.hosts)
        }
        fleet.twice("agent.yml", host_vars, extravars)
        for i, host in enumerate(fleet.hosts):
            config = _file(host, "/etc/schoolfleet/agent.toml")
            settings = _settings(config, {}, tmp_path)
            assert (settings.device_id, settings.kind, settings.school_id) == (
                host.name,
                "panel",
                "1234",
            )
            assert (settings.room_id, settings.controller) == (f"r{i}", "127.0.0.1:7443")
            assert settings.enroll_token == TOKEN
            assert (str(settings.ca_cert), settings.heartbeat_interval) == (
                "/etc/schoolfleet/ca.crt",
                15.0,
            )
            assert _file(host, "/etc/schoolfleet/ca.crt") == ca.read_text()
            assert _file(host, "/etc/systemd/system/schoolfleet-agent.service") == (
                UNIT.read_text()
            )
            stat = _on_host(host, "stat", "-c", "%a %U %G", "/etc/schoolfleet/agent.toml")
            assert stat.split() == ["640", "root", "nogroup"]
            # The unit's ExecStart runs the wheel's agent from the venv.
            version = _on_host(host, "/opt/schoolfleet/bin/schoolfleet-agent", "--version")
            assert version.strip() == "schoolfleet-agent 0.1.0"
    assert _machine_state() == before


FAKE_BROWSER = 'echo "$0" > /var/lib/schoolfleet/shown; exec sleep 600'


@pytest.mark.e2e
@pytest.mark.slow
@needs_root
def test_kiosk_playbook_hands_lessons_to_the_kiosk_session(tmp_path: Path) -> None:
    before = _machine_state()
    # A browser that records the URL it was given, in place of Chromium.
    extravars = {"sf_kiosk_browser_argv": ["/bin/sh", "-c", FAKE_BROWSER]}
    with _fleet(2, tmp_path) as fleet:
        fleet.twice("kiosk.yml", {}, extravars)
        for host in fleet.hosts:
            desktop = _file(host, "/home/nobody/.config/autostart/schoolfleet-kiosk.desktop")
            assert "\nExec=/opt/schoolfleet/bin/sf-kiosk\n" in desktop
            owners = _on_host(
                host,
                *("stat", "-c", "%U:%G %a"),
                *("/home/nobody/.config/autostart", "/var/lib/schoolfleet/kiosk"),
            )
            assert owners.splitlines() == ["nobody:nogroup 755"] * 2
            for script, shell in (("sf-kiosk", "bash"), ("sf-kiosk-show", "sh")):
                _on_host(host, shell, "-n", f"/opt/schoolfleet/bin/{script}")
            # The agent reads its kiosk settings from the drop-in's environment.
            dropin = _file(host, "/etc/systemd/system/schoolfleet-agent.service.d/kiosk.conf")
            env = dict(
                shlex.split(line.removeprefix("Environment="))[0].split("=", 1)
                for line in dropin.splitlines()
                if line.startswith("Environment=")
            )
            identity = 'device_id = "p1"\nkind = "panel"\nschool_id = "1"\n'
            settings = _settings(identity, env, tmp_path)
            assert settings.kiosk_argv == ("/opt/schoolfleet/bin/sf-kiosk-show", "{url}")
            assert settings.kiosk_program == "sf-kiosk"
        _lesson_is_shown_and_closed(fleet.hosts[0])
    assert _machine_state() == before


def _lesson_is_shown_and_closed(host: SshHost) -> None:
    """sf-kiosk-show as the agent's launcher runs it, and the session's sf-kiosk: the URL
    reaches the browser, and the browser goes when the launcher stops the lesson."""
    url = "https://lessons.test/l/1?a=$(x)&b='y'"
    enter = ["nsenter", "--target", str(host.pid), "--mount", "--"]
    session = subprocess.Popen([*enter, "/opt/schoolfleet/bin/sf-kiosk"], start_new_session=True)
    show = subprocess.Popen(
        [*enter, "/opt/schoolfleet/bin/sf-kiosk-show", url], start_new_session=True
    )
    try:
        assert _wait_for(lambda: host.read_file("/var/lib/schoolfleet/shown") == url + "\n")
        children = psutil.Process(session.pid).children(recursive=True)
        (browser,) = [p for p in children if p.cmdline() == ["sleep", "600"]]
        os.killpg(show.pid, signal.SIGTERM)  # what the launcher does at the lesson's end
        assert show.wait(10) == 0
        assert host.read_file("/var/lib/schoolfleet/kiosk/url") is None
        assert _wait_for(lambda: not is_alive(browser))
    finally:
        for proc in (show, session):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


def _wait_for(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.e2e
@needs_root
def test_timesync_playbook_writes_each_hosts_servers_once(tmp_path: Path) -> None:
    before = _machine_state()
    extravars = {"sf_ntp_fallback_servers": ["ntp.fallback.test"]}
    with _fleet(2, tmp_path) as fleet:
        host_vars = {
            h.name: {"sf_ntp_servers": [f"ntp-{h.name}.test", "ntp.city.test"]} for h in fleet.hosts
        }
        fleet.twice("timesync.yml", host_vars, extravars)
        for host in fleet.hosts:
            assert _file(host, "/etc/systemd/timesyncd.conf.d/schoolfleet.conf").endswith(
                f"[Time]\nNTP=ntp-{host.name}.test ntp.city.test\nFallbackNTP=ntp.fallback.test\n"
            )
    assert _machine_state() == before


@pytest.mark.e2e
@needs_root
def test_updates_playbook_reports_only_the_host_that_needs_a_reboot(tmp_path: Path) -> None:
    before = _machine_state()
    extravars = {
        "sf_updates_check_only": True,
        "sf_apt_update_cache": False,
        "sf_allow_reboot": False,
        # A third guard: were the reboot task ever to run, it would fail, not reboot
        # this machine, whose kernel the hosts share.
        "sf_reboot_command": "/bin/false",
    }
    # apt keeps its binary cache in /var/cache/apt: a private, empty one per host.
    with _fleet(2, tmp_path, (*PRIVATE_DIRS, "/var/cache/apt")) as fleet:
        needs, fine = fleet.hosts
        _on_host(needs, "touch", "/run/reboot-required")
        assert fine.read_file("/run/reboot-required") is None
        # --check as well: the whole run is a simulation.
        run = fleet.play("updates.yml", {}, extravars, cmdline="--check")
        assert run.status == "successful", run.stats
        apt = run.task_events("Packages are upgraded (dist-upgrade)")
        assert sorted(apt) == sorted(("runner_on_ok", h.name) for h in (needs, fine))
        assert sorted(run.task_events("The host is rebooted")) == sorted(
            ("runner_on_skipped", h.name) for h in (needs, fine)
        )
        assert sorted(run.task_events("Say that the host needs a reboot")) == sorted(
            [("runner_on_ok", needs.name), ("runner_on_skipped", fine.name)]
        )
        assert run.stats["artifact_data"] == {"sf_reboot_needed": [needs.name]}
    assert _machine_state() == before
