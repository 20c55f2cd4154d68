"""agent.yml upgrades in waves, and a device whose new release fails its health check
goes back to its previous release, on real SSH hosts (tests/ssh_hosts.py): the failed
host is rolled back and fails, the later waves never start, and a good release after
that upgrades everyone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netns import needs_root
from tests.ssh_hosts import SshHost
from tests.test_playbooks import _fleet, _on_host
from tests.wheels import build_wheel, copy_tree

# Checked by Python before anything runs: a release that cannot start on the device.
BROKEN = 'raise SystemExit("this release cannot start")\n'


def _build(version: str, out: Path, work: Path, *, broken: bool = False) -> Path:
    """A wheelhouse with the agent's wheel at ``version`` (built offline from a copy of
    the tree); ``broken``: its agent exits at once, as a bad release would."""
    source = copy_tree(work / f"source-{version}", version)
    if broken:
        main = source / "agent" / "main.py"
        main.write_text(BROKEN + main.read_text())
    house = out / version
    house.mkdir()
    return build_wheel(source, house)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wheelhouses: 0.1.0 (good), 0.1.1 (broken), 0.1.2 (good)."""
    out = tmp_path_factory.mktemp("wheelhouses")
    work = tmp_path_factory.mktemp("sources")
    return {
        "0.1.0": _build("0.1.0", out, work),
        "0.1.1": _build("0.1.1", out, work, broken=True),
        "0.1.2": _build("0.1.2", out, work),
    }


def _version(host: SshHost) -> str:
    return _on_host(host, "/opt/schoolfleet/bin/schoolfleet-agent", "--version").strip()


def _in_use(host: SshHost) -> str:
    return _on_host(host, "readlink", "/opt/schoolfleet/venv").strip()


def _releases(host: SshHost) -> set[str]:
    listed = _on_host(host, "ls", "/opt/schoolfleet/releases").split()
    return {f"/opt/schoolfleet/releases/{name}" for name in listed}


@pytest.mark.e2e
@pytest.mark.slow
@needs_root
def test_a_failed_upgrade_rolls_back_on_the_device_and_stops_the_waves(
    tmp_path: Path, releases: dict[str, Path]
) -> None:
    common = {
        # The wheelhouses hold the agent only: its dependencies are not installed.
        "sf_agent_pip_extra_args": "--no-deps",
        "sf_controller": "127.0.0.1:7443",
        # One host first, then the rest.
        "sf_agent_waves": ["1", "100%"],
    }

    def wheels(version: str) -> dict[str, object]:
        return {**common, "sf_agent_wheelhouse": str(releases[version])}

    with _fleet(3, tmp_path) as fleet:
        host_vars = {h.name: {"sf_kind": "panel", "sf_school": 1234} for h in fleet.hosts}
        first = fleet.play("agent.yml", host_vars, wheels("0.1.0"))
        assert first.status == "successful", first.stats
        assert {_version(h) for h in fleet.hosts} == {"schoolfleet-agent 0.1.0"}
        good = {h.name: _in_use(h) for h in fleet.hosts}

        bad = fleet.play("agent.yml", host_vars, wheels("0.1.1"))
        assert bad.status == "failed"
        failures = bad.task_events("The host fails, naming what happened")
        assert len(failures) == 1 and failures[0][0] == "runner_on_failed", failures
        tried = failures[0][1]
        [message] = [
            e["event_data"]["res"]["msg"]
            for e in bad.events
            if e["event"] == "runner_on_failed"
            and e["event_data"]["task"] == "The host fails, naming what happened"
        ]
        assert "The release runs on this device" in message
        assert message.endswith(f"rolled back to {Path(good[tried]).name}"), message
        # The first wave's host is back on its release, the failed one is gone, and the
        # next wave never started: nothing ran on the other hosts.
        touched = {
            e["event_data"]["host"]
            for e in bad.events
            if e["event"].startswith("runner_on") and e["event_data"].get("host")
        }
        assert touched == {tried}
        for host in fleet.hosts:
            assert _version(host) == "schoolfleet-agent 0.1.0"
            assert _in_use(host) == good[host.name]
            assert _releases(host) == {good[host.name]}

        fixed = fleet.play("agent.yml", host_vars, wheels("0.1.2"))
        assert fixed.status == "successful", fixed.stats
        for host in fleet.hosts:
            assert _version(host) == "schoolfleet-agent 0.1.2"
            # The release it replaced stays, for the next rollback.
            assert _releases(host) == {_in_use(host), good[host.name]}


@pytest.mark.e2e
@needs_root
def test_an_agent_installed_before_releases_is_upgraded_and_kept_as_the_previous(
    tmp_path: Path, releases: dict[str, Path]
) -> None:
    extravars = {
        "sf_agent_pip_extra_args": "--no-deps",
        "sf_controller": "127.0.0.1:7443",
        "sf_agent_wheelhouse": str(releases["0.1.2"]),
    }
    with _fleet(1, tmp_path) as fleet:
        [host] = fleet.hosts
        # The layout the previous release's agent.yml made: the venv right at its place.
        _on_host(host, "mkdir", "-p", "/opt/schoolfleet/bin")
        _on_host(host, "/usr/bin/python3", "-m", "venv", "/opt/schoolfleet/venv")
        [wheel] = releases["0.1.0"].iterdir()
        pip = ["/opt/schoolfleet/venv/bin/pip", "install", "--quiet", "--no-deps", "--no-index"]
        _on_host(host, *pip, "--disable-pip-version-check", str(wheel))
        agent = "/opt/schoolfleet/venv/bin/schoolfleet-agent"
        _on_host(host, "ln", "-s", agent, "/opt/schoolfleet/bin/schoolfleet-agent")
        assert _version(host) == "schoolfleet-agent 0.1.0"

        run = fleet.play("agent.yml", {host.name: {"sf_kind": "panel", "sf_school": 1}}, extravars)
        assert run.status == "successful", run.stats
        assert _version(host) == "schoolfleet-agent 0.1.2"
        before = "/opt/schoolfleet/releases/before-releases"
        assert _releases(host) == {_in_use(host), before}
        # The earlier install is whole, ready for a rollback.
        old = _on_host(host, f"{before}/bin/python", "-c", "import agent; print(agent.__file__)")
        assert old.startswith(f"{before}/lib/")
