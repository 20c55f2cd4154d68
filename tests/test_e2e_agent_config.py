"""A wrong value in the agent's config is logged and defaulted; a missing identity stops it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.procs import BIN, Agent, Controller, schoolctl, wait_until

pytestmark = pytest.mark.e2e


def test_a_wrong_value_is_logged_and_the_device_still_comes_online(
    controller: Controller, agents: list[Agent]
) -> None:
    agent = Agent(
        controller.workdir,
        "panel-typo",
        "panel",
        "s1",
        "r1",
        controller.address,
        extra={"heartbeat_interval": "fast"},
    ).start()
    agents.append(agent)

    def online() -> bool:
        shown = schoolctl(controller.address, "devices", "show", "panel-typo", "--json")
        return shown.code == 0 and shown.json()["status"] == "online"

    wait_until(online, 20, "panel-typo online")
    assert agent.proc is not None and agent.proc.poll() is None
    config = controller.workdir / "agent-panel-typo.toml"
    problems = [line for line in agent.log.read_text().splitlines() if "config problem" in line]
    assert len(problems) == 1
    assert problems[0].endswith(
        f" ERROR agent: config problem: config {config}: 'heartbeat_interval' must be a "
        "number, got 'fast'; using the default 30.0"
    )


def test_a_missing_device_id_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('kind = "panel"\nschool_id = "s1"\ncontroller = "127.0.0.1:1"\n')
    # The identity must not leak in from the environment the tests run in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLFLEET_AGENT_")}
    done = subprocess.run(
        [str(BIN / "schoolfleet-agent"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"schoolfleet-agent: config {config}: missing required key 'device_id' "
        "(or SCHOOLFLEET_AGENT_<KEY>)"
    ]
    assert done.stdout == ""


def test_without_a_ca_certificate_the_agent_will_not_talk_plaintext(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "p1"\nkind = "panel"\nschool_id = "s1"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLFLEET_AGENT_")}
    done = subprocess.run(
        [str(BIN / "schoolfleet-agent"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "schoolfleet-agent: 'ca_cert' is not set: the agent talks to the controller over TLS "
        "only; set ca_cert to the controller's CA certificate (tls = false only in a lab)"
    ]
