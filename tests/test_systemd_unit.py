"""The agent's systemd unit is valid and keeps the agent unprivileged."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

from tests.procs import BIN

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "schoolfleet-agent.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd, installed by .ci/run)"
    # verify checks that ExecStart exists: point it at this checkout's agent.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace(
            "/opt/schoolfleet/bin/schoolfleet-agent", str(BIN / "schoolfleet-agent")
        )
    )
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
