"""The agent as a process: reconnects on its own, stops cleanly and promptly."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.procs import BIN, Agent, Controller, free_port, schoolctl, wait_until

pytestmark = pytest.mark.e2e


def test_agent_retries_with_capped_jittered_backoff_until_the_controller_appears(
    tmp_path: Path, agents: list[Agent]
) -> None:
    port = free_port()
    agent = Agent(tmp_path, "panel-early", "panel", "s1", "r1", f"127.0.0.1:{port}").start()
    agents.append(agent)
    wait_until(lambda: agent.log.read_text().count("controller link down") >= 4, 15, "retries")
    delays = [float(d) for d in re.findall(r"retry_in=([\d.]+)s", agent.log.read_text())]
    assert all(0 <= d <= 1.0 for d in delays)  # backoff_cap = 1 s
    assert len(set(delays)) > 1  # jittered, not a fixed period
    controller = Controller(tmp_path, port, {"SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1"})
    controller.start()
    try:
        wait_until(
            lambda: schoolctl(controller.address, "devices", "show", "panel-early").code == 0,
            15,
            "the agent connecting without a restart",
        )
    finally:
        controller.stop()


def test_sigterm_closes_the_stream_cleanly(controller: Controller, agents: list[Agent]) -> None:
    agent = Agent(controller.workdir, "panel-t", "panel", "s1", "r1", controller.address).start()
    agents.append(agent)

    def online() -> bool:
        shown = schoolctl(controller.address, "devices", "show", "panel-t", "--json")
        return shown.code == 0 and shown.json()["status"] == "online"

    wait_until(online, 20, "panel-t online")
    assert agent.stop() == 0
    assert "agent stopped device=panel-t" in agent.log.read_text()
    wait_until(
        lambda: "stream closed device=panel-t" in controller.log_text(), 5, "stream close logged"
    )
    assert "reason=agent_closed" in controller.log_text()
    # The stream is down, so the device is offline at once, not after its deadline.
    shown = schoolctl(controller.address, "devices", "show", "panel-t", "--json").json()
    assert shown["stream_up"] is False and shown["status"] == "offline"


def test_sigterm_is_prompt_even_while_a_silent_peer_holds_the_connect(
    tmp_path: Path, agents: list[Agent]
) -> None:
    # A listener that accepts TCP and never speaks HTTP/2.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        agent = Agent(tmp_path, "panel-s", "panel", "s1", "r1", address).start()
        agents.append(agent)
        time.sleep(1.5)
        started = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - started < 6
    assert "agent stopped device=panel-s" in agent.log.read_text()


def test_under_systemd_log_lines_carry_no_timestamp_of_their_own(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "p1"\nkind = "panel"\nschool_id = "s1"\n'
        f'controller = "127.0.0.1:{free_port()}"\nbackoff_initial = 0.2\nbackoff_cap = 0.5\n'
        f'spool_path = "{tmp_path / "spool.db"}"\ntls = false\n'
    )
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "schoolfleet-agent"), "--config", str(config)],
            stdout=out,
            stderr=out,
            env={**os.environ, "JOURNAL_STREAM": "8:1234"},
        )
    try:
        wait_until(lambda: "controller link down" in log.read_text(), 10, "a log line")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    lines = log.read_text().splitlines()
    assert lines[0].startswith("INFO agent: agent started device=p1 ")
    assert any(line.startswith("WARNING agent.link: controller link down") for line in lines)
