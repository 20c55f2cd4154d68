"""The agent's and the controller's systemd units are valid and keep them unprivileged."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

from controller.settings import ControllerSettings
from tests.debian_tools import need
from tests.procs import BIN

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNIT = UNITS / "schoolfleet-agent.service"
CONTROLLER_UNIT = UNITS / "schoolfleet-controller.service"


def _service(unit: Path = UNIT) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return parser["Service"]


@pytest.mark.parametrize("source", [UNIT, CONTROLLER_UNIT], ids=lambda p: p.stem)
def test_systemd_accepts_the_unit(tmp_path: Path, source: Path) -> None:
    analyze = need("systemd-analyze", "systemd")
    # verify checks that ExecStart exists: point it at this checkout's programs.
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/schoolfleet/bin/", f"{BIN}/"))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # systemd-analyze exits 0 on ignored bad lines, so its complaints are the verdict.
    assert done.returncode == 0
    assert done.stderr.strip() == "", done.stderr


def test_the_agent_runs_unprivileged_and_restarts() -> None:
    service = _service()
    assert service["User"] == "schoolfleet"
    assert service["Restart"] == "on-failure"
    assert service["CapabilityBoundingSet"] == ""
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["KillSignal"] == "SIGTERM"
    assert "--config /etc/schoolfleet/agent.toml" in service["ExecStart"]


def test_the_controller_keeps_its_data_and_drops_ansible_to_its_own_user() -> None:
    service = _service(CONTROLLER_UNIT)
    assert service["User"] == "schoolfleet-controller"
    assert (service["StateDirectory"], service["StateDirectoryMode"]) == ("schoolfleet", "0700")
    assert service["UMask"] == "0077"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    # Only what setpriv needs to start a wave as schoolfleet-ansible.
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_SETUID", "CAP_SETGID"}
    assert set(service["AmbientCapabilities"].split()) == {"CAP_SETUID", "CAP_SETGID"}
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["ReadWritePaths"] == "-/var/lib/schoolfleet-ansible"
    assert "-o schoolfleet-ansible" in service["ExecStartPre"]
    assert "--config /etc/schoolfleet/controller.toml" in service["ExecStart"]
    # The default rollout_os_user is the account the unit prepares.
    assert ControllerSettings().rollout_os_user == "schoolfleet-ansible"
