"""Schools' uplinks, end to end: real controllers and agents on loopback, schoolctl as
a user runs it, /metrics as Prometheus reads it, rows in the store."""

from __future__ import annotations

import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Agent, Controller, schoolctl, wait_until

pytestmark = pytest.mark.e2e

# Above anything loopback gives, so that every measured school counts as slow.
HUGE_TARGET = "100000"


@pytest.fixture
def hand_only(tmp_path: Path) -> Iterator[Controller]:
    """Checks only by hand, 5 MB each, every school under the target."""
    env = {
        "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
        "SCHOOLFLEET_CONTROLLER_UPLINK_INTERVAL": "0",
        "SCHOOLFLEET_CONTROLLER_UPLINK_BYTES": "5000000",
        "SCHOOLFLEET_CONTROLLER_UPLINK_TARGET_MBPS": HUGE_TARGET,
    }
    c = Controller(tmp_path, env=env)
    try:
        yield c.start()
    finally:
        c.stop()


def _online(c: Controller, *devices: str) -> None:
    def all_online() -> bool:
        listed = schoolctl(c.address, "devices", "list", "--status", "online", "--json")
        return listed.code == 0 and {d["device_id"] for d in listed.json()} >= set(devices)

    wait_until(all_online, 20, f"{', '.join(devices)} online")


def test_a_hand_check_measures_the_schools_uplink_and_status_shows_it_under_the_target(
    hand_only: Controller, agents: list[Agent]
) -> None:
    c = hand_only
    agents.append(Agent(c.workdir, "pc-1", "monoblock", "s1", "r1", c.address).start())
    agents.append(Agent(c.workdir, "srv-1", "server", "s1", "", c.address).start())
    _online(c, "pc-1", "srv-1")

    done = schoolctl(c.address, "uplink", "check", "--school", "s1", "--json", timeout=60)
    assert done.code == 0, done.err
    check = done.json()
    # The school server measures; loopback gives far more than a school's line.
    assert check["state"] == "ok" and check["device_id"] == "srv-1"
    assert check["bytes"] == 5_000_000 and check["error"] == ""
    assert 10 < check["mbps"] < 1_000_000 and 0 < check["seconds"] < 10

    people = schoolctl(c.address, "uplink", "check", "--school", "s1", timeout=60)
    assert people.code == 0
    assert re.fullmatch(
        r"school s1: [\d.]+ Mbit/s \(5000000 bytes in [\d.]+s, measured by srv-1\)\n", people.out
    )

    listed = schoolctl(c.address, "uplink", "list", "--json").json()
    assert [s["school_id"] for s in listed] == ["s1"]
    assert listed[0]["measured"]["state"] == "ok" and listed[0]["latest"]["state"] == "ok"
    assert "srv-1" in schoolctl(c.address, "uplink", "list").out

    status = schoolctl(c.address, "status", "--json").json()
    assert status["uplink_target_mbps"] == float(HUGE_TARGET)
    assert [(s["school_id"], s["device_id"]) for s in status["slow_uplinks"]] == [("s1", "srv-1")]
    shown = schoolctl(c.address, "status").out
    assert f"schools under {HUGE_TARGET} Mbit/s" in shown
    assert re.search(r"^s1\s+[\d.]+\s+\d+s ago\s+srv-1$", shown, re.MULTILINE), shown

    samples = c.metrics()
    latest = listed[0]["measured"]["mbps"]
    assert samples['schoolfleet_school_uplink_mbps{school="s1"}'] == pytest.approx(latest, 0.01)
    assert samples['schoolfleet_uplink_checks_total{result="ok"}'] == 2
    assert samples['schoolfleet_uplink_checks_total{result="failed"}'] == 0

    audit = schoolctl(c.address, "audit", "--action", "uplink.check", "--json").json()
    assert len(audit) == 2 and audit[0]["outcome"] == "ok" and audit[0]["school_id"] == "s1"
    assert "Mbit/s measured by srv-1" in audit[0]["message"]


def test_a_check_is_refused_outside_the_callers_schools(
    hand_only: Controller, agents: list[Agent]
) -> None:
    c = hand_only
    it2 = c.create_user("it2", "school-it", "s2").token
    refused = schoolctl(c.address, "uplink", "check", "--school", "s1", token=it2)
    assert refused.code == 6
    assert "may not uplink.check in school s1" in refused.err


def test_a_school_whose_only_device_is_offline_is_told_so(
    hand_only: Controller, agents: list[Agent]
) -> None:
    c = hand_only
    agent = Agent(c.workdir, "panel-2", "panel", "s2", "r1", c.address).start()
    agents.append(agent)
    _online(c, "panel-2")
    agent.stop()
    wait_until(
        lambda: (
            schoolctl(c.address, "devices", "show", "panel-2", "--json").json()["status"]
            == "offline"
        ),
        10,
        "panel-2 offline",
    )
    for school in ("s2", "nowhere"):
        refused = schoolctl(c.address, "uplink", "check", "--school", school)
        assert refused.code == 5
        assert refused.err == (
            f"schoolctl: school {school} has no online device: a check needs one to measure from\n"
        )
    assert schoolctl(c.address, "uplink", "list", "--json").json() == []


def test_the_endpoint_answers_only_a_live_token(hand_only: Controller) -> None:
    base = f"http://127.0.0.1:{hand_only.uplink_port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path in ("/uplink/not-a-token", "/uplink/", "/", "/metrics"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(base + path, timeout=5)
        assert caught.value.code == 404, path
        caught.value.close()


def test_the_schedule_measures_every_school_and_never_one_school_twice_at_once(
    tmp_path: Path, agents: list[Agent]
) -> None:
    env = {
        "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
        "SCHOOLFLEET_CONTROLLER_UPLINK_INTERVAL": "2",
        "SCHOOLFLEET_CONTROLLER_UPLINK_CONCURRENCY": "2",
        "SCHOOLFLEET_CONTROLLER_UPLINK_BYTES": "20000000",
    }
    c = Controller(tmp_path, env=env).start()
    try:
        schools = ["a1", "b2", "c3"]
        for school in schools:
            for n in (1, 2):
                device = f"p{n}-{school}"
                agents.append(Agent(tmp_path, device, "panel", school, "r1", c.address).start())

        def each_measured_twice() -> bool:
            with sqlite3.connect(f"file:{c.database}?mode=ro", uri=True) as db:
                rows = db.execute(
                    "SELECT school_id, COUNT(*) FROM uplink_checks WHERE mbps IS NOT NULL "
                    "GROUP BY school_id"
                ).fetchall()
            return len(rows) == len(schools) and all(n >= 2 for _, n in rows)

        wait_until(each_measured_twice, 40, "every school measured twice", step=0.5)
    finally:
        assert c.stop() == 0
    # Per school, each check ended before the next began.
    events = re.findall(r"uplink check (started|done|failed) school=(\S+)", c.log_text())
    for school in schools:
        mine = [kind for kind, s in events if s == school]
        assert mine[0::2] == ["started"] * len(mine[0::2]), mine
        assert all(kind != "started" for kind in mine[1::2]), mine
    assert [s for s in schools if ("done", s) not in events] == []
