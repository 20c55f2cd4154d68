"""A device's full report travels to schoolctl, judged by the controller's thresholds."""

from __future__ import annotations

import platform
from pathlib import Path

import psutil
import pytest

from agent.system import parse_os_release
from tests.procs import Agent, Controller, schoolctl, wait_until

pytestmark = pytest.mark.e2e


def test_the_full_report_reaches_schoolctl_judged_by_the_controllers_limits(
    tmp_path: Path, agents: list[Agent]
) -> None:
    # A disk limit every real disk passes, so the verdict shows the controller's
    # thresholds reached the agent (its own default is 90%).
    controller = Controller(
        tmp_path,
        env={
            "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
            "SCHOOLFLEET_CONTROLLER_DISK_DEGRADED_PERCENT": "0.001",
        },
    ).start()
    try:
        agent = Agent(
            tmp_path,
            "panel-r",
            "panel",
            "s1",
            "r1",
            controller.address,
            extra={"kiosk_program": "/usr/bin/no-such-kiosk"},
        ).start()
        agents.append(agent)

        def reported() -> dict[str, object] | None:
            shown = schoolctl(controller.address, "devices", "show", "panel-r", "--json")
            if shown.code != 0:
                return None
            device: dict[str, object] = shown.json()
            reasons = device["reasons"]
            return (
                device if isinstance(reasons, list) and any("disk" in r for r in reasons) else None
            )

        device = wait_until(reported, 20, "a report judged by the controller's limits")
        assert device["condition"] == "degraded"
        assert "kiosk program not running" in device["reasons"]  # type: ignore[operator]
        release = parse_os_release(Path("/etc/os-release").read_text())
        assert device["os"] == {
            "name": release["NAME"],
            "version": release.get("VERSION_ID") or release.get("VERSION"),
            "kernel": platform.release(),
            "boot_time": device["os"]["boot_time"],  # type: ignore[index]
        }
        system = device["system"]
        assert isinstance(system, dict)
        assert "/" in [fs["mountpoint"] for fs in system["filesystems"]]
        assert system["kiosk_running"] is False
        # Hardware this machine lacks is reported as absent, not as zero.
        if psutil.sensors_battery() is None:
            assert system["battery_percent"] is None and system["on_ac_power"] is None
        assert system["agent_rss_bytes"] > 10 * 2**20
        network = device["network"]
        assert isinstance(network, dict)
        # The interfaces that matter reach schoolctl: the uplink, never loopback.
        names = [i["name"] for i in network["interfaces"]]
        assert "lo" not in names
        if network["default_interface"]:
            assert names[0] == network["default_interface"]
        assert device["spool"]["dropped"] == 0  # type: ignore[index]
        assert device["seq_gaps"] == 0

        shown = schoolctl(controller.address, "devices", "show", "panel-r")
        assert "degraded (" in shown.out and "kiosk program not running" in shown.out
        assert "filesystem" in shown.out and "default route" in shown.out

        degraded = schoolctl(controller.address, "devices", "list", "--condition", "degraded")
        assert "panel-r" in degraded.out
        ok = schoolctl(controller.address, "devices", "list", "--condition", "ok", "--json")
        assert ok.json() == []
        bad = schoolctl(controller.address, "devices", "list", "--condition", "fine")
        assert bad.code == 2 and "fine" in bad.err and "Traceback" not in bad.err
    finally:
        controller.stop()
