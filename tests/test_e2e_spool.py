"""The offline spool end to end: a cut link, a power cut, a bad spool file."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Agent, Controller, free_port, schoolctl, wait_until

pytestmark = pytest.mark.e2e

INTERVAL_ENV = {"SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1"}


def _device(controller: Controller, device_id: str) -> dict[str, Any] | None:
    shown = schoolctl(controller.address, "devices", "show", device_id, "--json")
    return shown.json() if shown.code == 0 else None


def _spooled(agent: Agent) -> int:
    """The latest count of waiting messages the agent logged."""
    counts = re.findall(r"spooled=(\d+)", agent.log.read_text())
    return int(counts[-1]) if counts else 0


@pytest.mark.slow
def test_a_cut_link_and_a_power_cut_lose_nothing_and_store_nothing_twice(
    tmp_path: Path, agents: list[Agent]
) -> None:
    port = free_port()
    controller = Controller(tmp_path, port, INTERVAL_ENV).start()
    agent = Agent(tmp_path, "panel-s", "panel", "s1", "r1", controller.address).start()
    agents.append(agent)
    try:
        wait_until(
            lambda: (d := _device(controller, "panel-s")) and d["heartbeats_stored"] >= 2,
            20,
            "heartbeats stored before the cut",
        )
        controller.stop()
        wait_until(lambda: _spooled(agent) >= 3, 30, "heartbeats spooled while the link is down")
        # A power cut while offline: the spool must survive it.
        agent.stop(signal.SIGKILL)
        before_restart = _spooled(agent)
        agent.start()
        wait_until(
            lambda: _spooled(agent) >= before_restart + 2,
            30,
            "the restarted agent spooling on from what survived",
        )
        assert "spool unreadable" not in agent.log.read_text()
        spooled = _spooled(agent)
        controller.start()

        def replayed() -> dict[str, Any] | None:
            # Stored before the cut (>= 2), the spooled ones, and a fresh one after.
            d = _device(controller, "panel-s")
            return d if d and d["last_seq"] > spooled + 2 else None

        device = wait_until(replayed, 30, "the spool replayed")
        # Every sequence number from 1 up was a heartbeat: all stored, each once.
        assert device["heartbeats_stored"] == device["last_seq"]
        assert device["seq_gaps"] == 0
        assert device["spool"]["dropped"] == 0
        assert device["status"] == "online"
        assert "spool renumbered" not in agent.log.read_text()
    finally:
        controller.stop()


def test_sigterm_while_offline_keeps_the_spool_for_the_next_start(
    tmp_path: Path, agents: list[Agent]
) -> None:
    agent = Agent(tmp_path, "panel-o", "panel", "s1", "r1", f"127.0.0.1:{free_port()}").start()
    agents.append(agent)
    wait_until(lambda: _spooled(agent) >= 3, 30, "heartbeats spooled with no controller")
    assert agent.stop() == 0
    closed = re.findall(r"spool closed .*pending=(\d+)", agent.log.read_text())
    assert closed, agent.log.read_text()
    agent.start()
    wait_until(lambda: agent.log.read_text().count("spool opened") == 2, 10, "spool reopened")
    opened = re.findall(r"spool opened .*pending=(\d+)", agent.log.read_text())
    assert int(opened[-1]) == int(closed[-1])


def test_a_garbage_spool_is_moved_aside_and_the_agent_reports_on(
    controller: Controller, agents: list[Agent]
) -> None:
    spool = controller.workdir / "garbage-spool.db"
    spool.write_bytes(b"\x00not a spool\xff" * 500)
    agent = Agent(
        controller.workdir,
        "panel-g",
        "panel",
        "s1",
        "r1",
        controller.address,
        extra={"spool_path": str(spool)},
    ).start()
    agents.append(agent)
    wait_until(
        lambda: (d := _device(controller, "panel-g")) and d["status"] == "online",
        20,
        "panel-g online",
    )
    line = next(x for x in agent.log.read_text().splitlines() if "spool unreadable" in x)
    assert "moved aside" in line and "garbage-spool.db.bad-" in line
    moved = list(controller.workdir.glob("garbage-spool.db.bad-*"))
    assert moved and moved[0].read_bytes().startswith(b"\x00not a spool\xff")


def test_an_unusable_spool_place_falls_back_to_memory(
    controller: Controller, agents: list[Agent]
) -> None:
    blocked = controller.workdir / "spool-dir"
    blocked.mkdir()
    agent = Agent(
        controller.workdir,
        "panel-m",
        "panel",
        "s1",
        "r1",
        controller.address,
        extra={"spool_path": str(blocked)},
    ).start()
    agents.append(agent)
    wait_until(
        lambda: (d := _device(controller, "panel-m")) and d["status"] == "online",
        20,
        "panel-m online",
    )
    assert "spooling in memory only" in agent.log.read_text()


def test_ping_round_trip_and_its_result_survive_a_controller_crash(
    tmp_path: Path, agents: list[Agent]
) -> None:
    # The controller holds what it receives for 3 s before storing it, so a crash in
    # that window loses it on the controller's side: only the agent's spool has it.
    port = free_port()
    env = {**INTERVAL_ENV, "SCHOOLFLEET_CONTROLLER_FLUSH_INTERVAL": "3"}
    controller = Controller(tmp_path, port, env).start()
    agent = Agent(tmp_path, "panel-p", "panel", "s1", "r1", controller.address).start()
    agents.append(agent)
    try:
        wait_until(lambda: _device(controller, "panel-p"), 20, "panel-p stored")
        pinged = schoolctl(controller.address, "devices", "ping", "panel-p", "--json")
        assert pinged.code == 0, pinged.err
        answer = pinged.json()
        assert (answer["status"], answer["message"]) == ("ok", "pong")
        assert answer["round_trip_seconds"] < 10

        # Sent, answered, received, not yet stored: then the controller dies.
        second = schoolctl(controller.address, "devices", "ping", "panel-p", "--wait", "0.5")
        assert second.code == 5 and "no answer from panel-p within 0.5s" in second.err
        command_id = second.err.split("to ping ")[1].split()[0]
        wait_until(
            lambda: "command handled cmd=" + command_id in agent.log.read_text(),
            10,
            "the agent answering the second ping",
        )
        controller.stop(signal.SIGKILL)
        controller.start()

        def stored() -> dict[str, Any] | None:
            d = _device(controller, "panel-p")
            ids = [c["command_id"] for c in d["recent_commands"]] if d else []
            return d if command_id in ids else None

        device = wait_until(stored, 30, "the spooled result replayed")
        ids = [c["command_id"] for c in device["recent_commands"]]
        assert ids.count(command_id) == 1
        assert ids.count(answer["command_id"]) == 1
        results = [c for c in device["recent_commands"] if c["command_id"] == command_id]
        assert (results[0]["status"], results[0]["message"]) == ("ok", "pong")
        assert device["seq_gaps"] == 0

        offline = Agent(tmp_path, "panel-x", "panel", "s1", "r1", controller.address)
        offline.start()
        agents.append(offline)
        wait_until(lambda: _device(controller, "panel-x"), 20, "panel-x stored")
        offline.stop()
        refused = schoolctl(controller.address, "devices", "ping", "panel-x")
        assert refused.code == 5 and "is not connected" in refused.err
        unknown = schoolctl(controller.address, "devices", "ping", "panel-none")
        assert unknown.code == 4 and "no device 'panel-none'" in unknown.err
    finally:
        controller.stop()
