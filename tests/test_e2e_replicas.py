"""Three controllers on one PostgreSQL database behind HAProxy, as a city runs them:
agents spread over the three, a lesson dispatched once whichever controller holds
the dispatcher, and `kill -9` of that controller just before the lesson: its agents
come back through the others, nothing acked is lost, every panel opens the lesson
exactly once, and the figures are exported once.

Beside the real agents (the panels), hundreds of simulated devices on mutual TLS
(bench/storm_devices.py: each enrolled with its own key and certificate, its own
connection, the agent's reconnect rule), so that the dead replica's share is a crowd:
each of them is back on a survivor within a bound, and every heartbeat acked to one
is in the store."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.restart_storm import SCHOOL, end_worker, enroll_all, spawn_worker, unstored
from bench.scale_storm import StormLog, stored_seqs
from common.retry_hint import RESTART_LOW
from controller.fleet.admission import restart_spread
from tests.lesson_site import FAKE_KIOSK, LessonSite
from tests.procs import Agent, Controller, schoolctl, wait_until
from tests.replicas import BALANCER_SOURCE, City, city

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 3.0
ENV = {
    "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
    "SCHOOLFLEET_CONTROLLER_CONTENT_HOSTS": '["127.0.0.1"]',
    "SCHOOLFLEET_CONTROLLER_LESSON_LEAD": "4",
    "SCHOOLFLEET_CONTROLLER_LESSON_SETTLE": "2",
    "SCHOOLFLEET_CONTROLLER_LESSON_ON_TIME": "10",
    "SCHOOLFLEET_CONTROLLER_LEASE_SECONDS": str(LEASE_SECONDS),
}
ROOMS = ("r1", "r2", "r3")
PANELS_PER_ROOM = 3
HEADER = "school,room,start,end,class,subject,teacher,content_url,remote\n"
# Simulated devices in one worker process, beside the nine panels.
DEVICES = 300
FLEET = DEVICES + len(ROOMS) * PANELS_PER_ROOM
# Seconds from the SIGKILL until every simulated device the dead replica held has a
# Welcome from a survivor. HAProxy passes the dead replica's close on at once; each
# device then waits a time drawn from [1, 1 + spread) s, the spread its Welcome named
# (controller/fleet/admission.py: 3 s for a fleet under 1,200), and reconnects through
# the balancer (TLS, Hello, the store's row, Welcome). That is 4 s; the 4 s beyond are
# for the close reaching a device and its reconnection on this loaded two-core machine
# (measured: the last back 4.0-4.6 s after the SIGKILL, docs/scale.md).
BACK_WITHIN = RESTART_LOW + restart_spread(FLEET) + 4.0
_OPENED = re.compile(r"stream open device=(\S+) .* stream=(\d+) last_seq=")
_CLOSED = re.compile(r"stream closed device=(\S+) peer=\S+ stream=(\d+) ")


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _holder(replicas: list[Controller], lease: str) -> Controller | None:
    held = [r for r in replicas if r.metrics().get(f'schoolfleet_lease_held{{lease="{lease}"}}')]
    assert len(held) <= 1, f"{lease} held by {len(held)} controllers"
    return held[0] if held else None


def _held(replica: Controller) -> set[str]:
    """The devices whose streams the replica's log shows opened and not closed."""
    streams: dict[str, str] = {}
    for line in replica.log_text().splitlines():
        if opened := _OPENED.search(line):
            streams[opened[1]] = opened[2]
        elif (closed := _CLOSED.search(line)) and streams.get(closed[1]) == closed[2]:
            del streams[closed[1]]
    return set(streams)


def _token(town: City, school: str, uses: int) -> str:
    made = town.ctl("enroll", "token", "create", "--school", school, "--uses", str(uses))
    assert made.code == 0, made.err
    return made.out.strip()


@pytest.mark.slow
def test_losing_a_replica_before_a_lesson_loses_nothing_and_launches_once(
    tmp_path: Path, pg_url: str, agents: list[Agent]
) -> None:
    with (
        city(tmp_path, pg_url, ENV, tls=True) as town,
        LessonSite() as site,
        contextlib.ExitStack() as workers,
    ):
        _run(tmp_path, town, site, agents, workers, pg_url)


def _run(
    tmp: Path,
    town: City,
    site: LessonSite,
    agents: list[Agent],
    workers: contextlib.ExitStack,
    url: str,
) -> None:
    replicas, lb, ctl = town.replicas, town.lb, town.ctl
    assert town.public is not None and town.ca_cert is not None
    kiosk = tmp / "kiosk.py"
    kiosk.write_text(FAKE_KIOSK)
    panels = [f"panel-{room}-{n}" for room in ROOMS for n in range(PANELS_PER_ROOM)]
    enroll = {
        "enroll_token": _token(town, "s1", len(panels)),
        "ca_cert": str(town.ca_cert),
        "enroll_controller": town.public.address,
    }
    for device_id in panels:
        room = device_id.split("-")[1]
        argv = [sys.executable, str(kiosk), "{url}", str(tmp / f"{device_id}.pids")]
        extra = {"kiosk_argv": argv, **enroll}
        agents.append(Agent(tmp, device_id, "panel", "s1", room, lb.address, extra=extra))
    for agent in agents:
        agent.start()

    # The simulated devices enroll through the balancer too, then stream through it.
    ca = town.ca_cert.read_bytes()
    rows = enroll_all(town.public.port, ca, _token(town, SCHOOL, DEVICES), DEVICES)
    ids = {int(str(row["index"])): str(row["id"]) for row in rows}
    (tmp / "devices.json").write_text(json.dumps(rows))
    events = StormLog()
    with (tmp / "devices.log").open("w") as stderr:
        worker = spawn_worker(lb.address, town.ca_cert, tmp / "devices.json", events.take, stderr)
    workers.callback(end_worker, worker)
    everyone = set(panels) | set(ids.values())

    def all_online() -> bool:
        devices = town.devices()
        online = {d for d, row in devices.items() if row["status"] == "online"}
        return set(devices) == online == everyone

    wait_until(all_online, 60, "every panel and device online through the balancer", step=0.5)
    wait_until(lambda: events.connected(DEVICES), 10, "every device's Welcome")
    streams = [r.metrics()["schoolfleet_connected_streams"] for r in replicas]
    assert sum(streams) == len(everyone) == FLEET
    assert all(streams), f"streams spread over the replicas: {streams}"
    # The fleet's figures come from one controller: summed, each device counts once.
    online = 'schoolfleet_devices{kind="panel",school="s1",status="online"}'
    wait_until(lambda: town.sum(online) == len(panels), 10, "fleet gauges exported once")

    start = float(int(time.time() + 16))
    schedule = tmp / "day.csv"
    schedule.write_text(
        HEADER
        + "".join(
            f"s1,{room},{_iso(start)},{_iso(start + 8)},7B,maths,T,{site.url(room)},no\n"
            for room in ROOMS
        )
    )
    imported = ctl("lessons", "import", str(schedule))
    assert imported.code == 0, imported.err
    assert "3 rows: 3 added, 0 updated, 0 unchanged" in imported.out

    # Just before the dispatch (lesson_lead before the start), the dispatcher's
    # controller dies without a word.
    victim = wait_until(lambda: _holder(replicas, "lesson-dispatcher"), 10, "a dispatcher")
    held_there = victim.metrics()["schoolfleet_connected_streams"]
    time.sleep(max(0.0, start - 4 - 2.5 - time.time()))
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    killed, killed_at = time.monotonic(), time.time()
    victim.stop()
    survivors = [r for r in replicas if r is not victim]
    # Its log names the streams it held when it died: as many as it counted before.
    on_victim = _held(victim)
    assert len(on_victim) == held_there
    held_devices = on_victim - set(panels)
    assert len(held_devices) >= DEVICES // 6, f"the dead replica held {len(held_devices)}"

    def back() -> bool:
        returned, lost = events.back(killed_at)
        every = sum(r.metrics()["schoolfleet_connected_streams"] for r in survivors)
        return every == len(everyone) and lost >= len(held_devices) and len(returned) == lost

    wait_until(back, 30, "every agent and device back on the surviving replicas", step=0.05)
    reconnected = time.monotonic() - killed
    # Exactly the dead replica's devices lost their streams; each is on a survivor now,
    # its Welcome again within the bound (seconds from the SIGKILL, sorted).
    returned, _ = events.back(killed_at)
    with events.lock:
        lost = {ids[d] for d, ends in events.ends.items() if any(t >= killed_at for t, *_ in ends)}
    assert lost == held_devices
    assert on_victim <= set().union(*(_held(r) for r in survivors))
    assert returned[-1] < BACK_WITHIN, (returned[-1], BACK_WITHIN)
    new_holder = wait_until(
        lambda: _holder(survivors, "lesson-dispatcher"), 10, "the dispatcher taken over"
    )
    assert new_holder is not victim

    # Each panel opens its room's lesson once, on time by its own clock.
    def all_opened() -> bool:
        return all(len(site.hits(f"/lesson/{room}")) >= PANELS_PER_ROOM for room in ROOMS)

    wait_until(all_opened, 30, "every panel opening its room's lesson")
    time.sleep(2)
    for room in ROOMS:
        opened = site.hits(f"/lesson/{room}")
        assert len(opened) == PANELS_PER_ROOM, f"{room}: {len(opened)} opens"
        assert all(start - 0.5 < at < start + 3 for at in opened), (room, opened, start)
    for device_id in panels:
        pids = (tmp / f"{device_id}.pids").read_text().split()
        assert len(pids) == 1, f"{device_id} launched {len(pids)} times"

    def settled() -> list[dict[str, Any]] | None:
        done = ctl("lessons", "today", "--json")
        lessons: list[dict[str, Any]] = done.json()
        return lessons if all(x["state"] == "held" for x in lessons) else None

    lessons = wait_until(settled, 40, "every lesson held")
    assert [(x["room_id"], x["panels"], x["launched"]) for x in lessons] == [
        (room, PANELS_PER_ROOM, PANELS_PER_ROOM) for room in ROOMS
    ]

    # A lesson by hand, asked of the controller that does not dispatch: it wakes the
    # dispatcher's holder through the bus and answers once that pass sent it.
    bystander = next(r for r in survivors if r is not new_holder)
    at_bystander = town.schoolctl_address(bystander)
    launched = town.ctl_at(
        at_bystander,
        "lessons",
        "launch",
        site.url("by-hand"),
        "--school",
        "s1",
        "--room",
        "r2",
        "--json",
    )
    assert launched.code == 0, launched.err
    assert (launched.json()["state"], launched.json()["panels"]) == ("dispatched", 3)
    wait_until(lambda: len(site.hits("/lesson/by-hand")) == PANELS_PER_ROOM, 15, "opened by hand")

    # A ping asked of that controller reaches every panel, those whose streams are on
    # the other relayed to it, and each answers.
    assert set(panels) - _held(bystander)
    for device_id in panels:
        pinged = town.ctl_at(at_bystander, "devices", "ping", device_id, "--json")
        assert pinged.code == 0, (device_id, pinged.err)
        assert pinged.json()["status"] == "ok"

    # Nothing any agent sent is missing from the store: every sequence number arrived.
    for agent in agents:
        agent.stop()
    devices = town.devices()
    assert {d: devices[d]["seq_gaps"] for d in panels} == dict.fromkeys(panels, 0)
    assert all(devices[d]["heartbeats_stored"] >= 20 for d in panels)
    # Each at its own address (here the machine's), never the balancer's: its PROXY
    # header named the client to the replica.
    assert {d["address"] for d in devices.values()} == {"127.0.0.1"}, BALANCER_SOURCE
    # Every heartbeat acked to a simulated device is stored: the store named at least
    # its highest ack so far whenever it came back, and holds at least its last one.
    end_worker(worker)
    assert len(events.acked) == DEVICES
    assert events.behind == []
    assert unstored(events.acked, stored_seqs(url)) == {}
    assert min(events.acked.values()) >= 20
    # Exported once by the survivors: the store's lesson figures, the leases.
    held = 'schoolfleet_lessons_today{school="s1",state="held"}'
    assert town.sum(held, survivors) == 3
    assert town.sum('schoolfleet_lease_held{lease="lesson-dispatcher"}', survivors) == 1
    assert town.sum('schoolfleet_lease_held{lease="store-gauges"}', survivors) == 1
    print(
        f"replica killed holding {held_there:.0f} streams; all back in {reconnected:.2f} s; "
        f"its {len(held_devices)} simulated devices each had a Welcome again within "
        f"{returned[-1]:.2f} s of the SIGKILL (median {statistics.median(returned):.2f} s, "
        f"bound {BACK_WITHIN:g} s)",
        file=sys.stderr,
    )


def test_an_uplink_check_by_hand_is_made_where_the_schools_device_is(
    tmp_path: Path, pg_url: str, agents: list[Agent]
) -> None:
    env = {
        "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
        "SCHOOLFLEET_CONTROLLER_LEASE_SECONDS": str(LEASE_SECONDS),
        "SCHOOLFLEET_CONTROLLER_UPLINK_INTERVAL": "0",
        "SCHOOLFLEET_CONTROLLER_UPLINK_BYTES": "2000000",
    }
    with city(tmp_path, pg_url, env, count=2) as town:
        agents.append(Agent(tmp_path, "srv-1", "server", "s1", "", town.lb.address).start())
        wait_until(lambda: town.sum("schoolfleet_connected_streams") == 1, 30, "srv-1 connected")
        [elsewhere] = [r for r in town.replicas if not r.metrics()["schoolfleet_connected_streams"]]
        # Asked of the controller without the school's device: the one with it measures.
        done = schoolctl(
            elsewhere.address,
            "uplink",
            "check",
            "--school",
            "s1",
            "--json",
            token=town.token,
            timeout=60,
        )
        assert done.code == 0, done.err
        check = done.json()
        assert (check["state"], check["device_id"], check["bytes"]) == ("ok", "srv-1", 2_000_000)
        listed = town.ctl("uplink", "list", "--json").json()
        assert [(x["school_id"], x["latest"]["device_id"]) for x in listed] == [("s1", "srv-1")]
        # A school no controller can measure is told so at once, not after a check's time.
        asked = time.monotonic()
        none = schoolctl(elsewhere.address, "uplink", "check", "--school", "s9", token=town.token)
        assert none.code == 5
        assert none.err == (
            "schoolctl: school s9 has no online device: a check needs one to measure from\n"
        )
        assert time.monotonic() - asked < 10
