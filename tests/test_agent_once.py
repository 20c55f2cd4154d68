"""`schoolfleet-agent --once`: one report for debugging, without a controller."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import psutil

from agent.system import parse_os_release
from tests.procs import BIN


def _once(tmp_path: Path, *extra: str, config: str = "") -> subprocess.CompletedProcess[str]:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "p1"\nkind = "panel"\nschool_id = "s1"\nroom_id = "r7"\n' + config)
    return subprocess.run(
        [str(BIN / "schoolfleet-agent"), "--config", str(path), "--once", *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_once_json_is_the_real_report(tmp_path: Path) -> None:
    done = _once(tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["device_id"], report["kind"], report["room_id"]) == ("p1", "panel", "r7")
    health = report["health"]
    assert abs(health["disk_percent"] - psutil.disk_usage("/").percent) < 1
    assert 0 <= health["cpu_percent"] <= 100
    assert health["uptime_seconds"] > 0


def test_once_for_people_and_a_bad_disk_path(tmp_path: Path) -> None:
    done = _once(tmp_path)
    assert done.returncode == 0
    assert any(line.split()[:2] == ["device_id", "p1"] for line in done.stdout.splitlines())
    missing = _once(tmp_path, "--json", config=f'disk_path = "{tmp_path / "nowhere"}"\n')
    assert missing.returncode == 1
    assert missing.stderr.startswith("schoolfleet-agent: report not collected:")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_once_reports_system_facts_and_its_own_verdict(tmp_path: Path) -> None:
    done = _once(tmp_path, "--json", config='kiosk_program = "/usr/bin/no-such-kiosk"\n')
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    release = parse_os_release(Path("/etc/os-release").read_text())
    assert report["system"]["os_name"] == release["NAME"]
    assert report["system"]["kernel"] == platform.release()
    assert report["system"]["kiosk_running"] is False
    assert "/" in [fs["mountpoint"] for fs in report["system"]["filesystems"]]
    assert report["system"]["agent_rss_bytes"] > 10 * 2**20
    assert "kiosk program not running" in report["reasons"]
    assert report["status"] in ("degraded", "critical")
