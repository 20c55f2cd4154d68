"""End to end: a real controller, three real agents, schoolctl as a user runs it."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Agent, Controller, free_port, schoolctl, wait_until

pytestmark = pytest.mark.e2e

DEVICES = [
    ("panel-101", "panel", "school-1", "r101"),
    ("laptop-7", "laptop", "school-1", "r101"),
    ("mono-3", "monoblock", "school-2", "lab-2"),
]


def _statuses(address: str) -> dict[str, str]:
    result = schoolctl(address, "devices", "list", "--json")
    if result.code != 0:
        return {}
    return {d["device_id"]: d["status"] for d in result.json()}


def _all(address: str, status: str, ids: list[str]) -> dict[str, str] | None:
    seen = _statuses(address)
    return seen if all(seen.get(i) == status for i in ids) else None


def test_fleet_online_offline_and_controller_restart(tmp_path: Path, agents: list[Agent]) -> None:
    port = free_port()
    controller = Controller(tmp_path, port, {"SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1"})
    controller.start()
    try:
        address = controller.address
        for device_id, kind, school, room in DEVICES:
            agents.append(Agent(tmp_path, device_id, kind, school, room, address).start())
        ids = [d[0] for d in DEVICES]

        wait_until(lambda: _all(address, "online", ids), 20, "three agents online")

        # The table a person reads, and the counts per school and kind.
        table = schoolctl(address, "devices", "list", "--school", "school-1")
        assert table.code == 0
        assert "panel-101" in table.out and "laptop-7" in table.out
        assert "mono-3" not in table.out
        status: dict[str, Any] = schoolctl(address, "status", "--json").json()
        assert status["totals"] == {"online": 3, "offline": 0}
        assert {(c["school_id"], c["kind"]) for c in status["counts"]} == {
            ("school-1", "panel"),
            ("school-1", "laptop"),
            ("school-2", "monoblock"),
        }
        shown = schoolctl(address, "devices", "show", "panel-101", "--json").json()
        assert shown["room_id"] == "r101" and shown["health"]["disk_percent"] > 0
        assert shown["offline_after_seconds"] == 3

        # Kill one agent outright: offline within its deadline (3 s; allow for polling).
        killed_at = time.monotonic()
        agents[1].stop(signal.SIGKILL)
        wait_until(
            lambda: _statuses(address).get("laptop-7") == "offline", 3 + 2, "laptop-7 offline"
        )
        assert time.monotonic() - killed_at <= 5
        offline = schoolctl(address, "devices", "list", "--status", "offline", "--json").json()
        assert [d["device_id"] for d in offline] == ["laptop-7"]
        assert (
            controller.metrics()[
                'schoolfleet_devices{kind="laptop",school="school-1",status="offline"}'
            ]
            == 1
        )

        # Restart the controller on the same port: the agents come back on their own.
        seq_before = schoolctl(address, "devices", "show", "panel-101", "--json").json()
        assert controller.stop() == 0
        down = schoolctl(address, "status")
        assert down.code == 3 and "cannot reach the controller" in down.err
        assert "Traceback" not in down.err
        controller.start()
        survivors = ["panel-101", "mono-3"]
        wait_until(lambda: _all(address, "online", survivors), 20, "agents back after restart")
        after = schoolctl(address, "devices", "show", "panel-101", "--json").json()
        # Sequence numbers go on from what was stored: nothing is reused after a restart.
        assert after["last_seq"] > seq_before["last_seq"]
        assert _statuses(address)["laptop-7"] == "offline"
        assert "stream open device=panel-101" in controller.log_text()
    finally:
        controller.stop()


def test_schoolctl_errors_are_one_line(controller: Controller) -> None:
    missing = schoolctl(controller.address, "devices", "show", "no-such-device")
    assert missing.code == 4
    assert missing.err.strip() == "schoolctl: no device 'no-such-device'"
    bad = schoolctl(controller.address, "devices", "list", "--school", "bad school!")
    assert bad.code == 2 and "school id 'bad school!' is not valid" in bad.err
    bad_kind = schoolctl(controller.address, "devices", "list", "--kind", "toaster")
    assert bad_kind.code == 2 and "toaster" in bad_kind.err
    for result in (missing, bad, bad_kind):
        assert "Traceback" not in result.err
    # With a token: without one, "not logged in" is what schoolctl says first.
    unreachable = schoolctl(f"127.0.0.1:{free_port()}", "devices", "list", token="sfu_" + "x" * 43)
    assert unreachable.code == 3
    assert len(unreachable.err.strip().splitlines()) == 1
    assert "cannot reach the controller" in unreachable.err
