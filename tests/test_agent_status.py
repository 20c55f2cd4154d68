"""The agent's ok / degraded / critical verdict, and the facts it rests on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from agent.network import NetworkReport
from agent.status import Thresholds, assess
from agent.system import Filesystem, SystemFacts, parse_os_release, read_os_release
from inventory.model import Health

HEALTH = Health(0, 5, 40, 50, 100, 0.1, 0.1, 0.1)
FACTS = SystemFacts(
    os_name="M OS",
    os_version="3",
    kernel="6.1",
    boot_time=0,
    swap_percent=None,
    filesystems=[Filesystem("/", "ext4", 10**10, 50.0)],
    temperatures_c={},
    battery_percent=None,
    on_ac_power=None,
    agent_rss_bytes=1,
    agent_cpu_percent=0,
    kiosk_running=None,
)
NET = NetworkReport([], "198.18.0.1", "eth0")


def test_healthy_device_is_ok() -> None:
    assert assess(HEALTH, FACTS, NET, Thresholds()) == ("ok", [])


def test_each_reason_is_named_and_the_worst_level_wins() -> None:
    facts = replace(
        FACTS,
        filesystems=[Filesystem("/", "ext4", 1, 93.4), Filesystem("/srv", "xfs", 1, 99.0)],
        temperatures_c={"coretemp": 88.0},
        battery_percent=7.0,
        on_ac_power=False,
        kiosk_running=False,
    )
    status, reasons = assess(HEALTH, facts, NET, Thresholds())
    assert status == "critical"
    assert reasons == [
        "disk / at 93%",
        "disk /srv at 99%",
        "temperature coretemp at 88°C",
        "battery at 7% and not charging",
        "kiosk program not running",
    ]
    degraded, _ = assess(HEALTH, replace(facts, filesystems=[]), NET, Thresholds())
    assert degraded == "degraded"


def test_no_default_route_is_critical() -> None:
    status, reasons = assess(HEALTH, FACTS, NetworkReport([], None, None), Thresholds())
    assert (status, reasons) == ("critical", ["no default route"])


def test_a_low_battery_on_ac_power_is_fine() -> None:
    facts = replace(FACTS, battery_percent=5.0, on_ac_power=True)
    assert assess(HEALTH, facts, NET, Thresholds()) == ("ok", [])


def test_os_release_parsing_and_absence(tmp_path: Path) -> None:
    text = 'NAME="M OS"\nVERSION_ID=3.1\n# comment\nBROKEN="unbalanced\nPRETTY_NAME=\'M OS 3\'\n'
    assert parse_os_release(text) == {"NAME": "M OS", "VERSION_ID": "3.1", "PRETTY_NAME": "M OS 3"}
    assert read_os_release(tmp_path) == (None, None)
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text('NAME="M OS"\nVERSION="3 (school)"\n')
    assert read_os_release(tmp_path) == ("M OS", "3 (school)")
