"""Debian's Prometheus scrapes a real controller that real agents report to, with
deploy/prometheus/rules.yml loaded: every Grafana panel's query and every rule's
expression returns data. And the series count does not grow with devices."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from bench import wire
from bench.loadgen import open_stream
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from tests.lesson_site import FAKE_KIOSK, LessonSite
from tests.procs import Agent, Controller, free_port, schoolctl, wait_until
from tests.prom import (
    Prometheus,
    PrometheusError,
    Rule,
    metric_names,
    panel_queries,
    recorded_names,
    rules,
    substitute,
    template_queries,
    with_bool,
)

pytestmark = pytest.mark.e2e

SCHOOL = "s1"
# Lessons of 3 s, held in one room and failed in another, and 8 s later the same in
# two more rooms (a room's lessons are told apart by their start minute): every lesson
# counter moves after Prometheus has seen it once, so increase() over it is above 0
# (a series' first sample is not an increase to Prometheus).
LESSON = 3.0
ROUNDS = ((0.0, "r101", "r102"), (8.0, "r103", "r104"))


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _controller(tmp: Path) -> Controller:
    return Controller(
        tmp,
        env={
            "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
            "SCHOOLFLEET_CONTROLLER_CONTENT_HOSTS": '["127.0.0.1"]',
            "SCHOOLFLEET_CONTROLLER_LESSON_LEAD": "1",
            "SCHOOLFLEET_CONTROLLER_LESSON_SETTLE": "1",
            "SCHOOLFLEET_CONTROLLER_LESSON_ON_TIME": "10",
            # Probes every second: of the access point and server below, on loopback.
            "SCHOOLFLEET_CONTROLLER_PROBE_INTERVAL": "1",
        },
    )


def _infrastructure(tmp: Path, c: Controller) -> None:
    """An access point that answers (the controller's own port, on loopback) and a
    server that does not (a closed port), probed; and one uplink check of the school."""
    closed = free_port()
    inventory = tmp / "inventory.csv"
    inventory.write_text(
        "type,id,school,room,name,location,model,mac,bssids,address,ssh_user,ssh_port\n"
        f"school,{SCHOOL},,,School 1,,,,,,,\n"
        f"ap,ap-1,{SCHOOL},r101,,,U6,,aa:bb:cc:00:01:01,127.0.0.1,,{c.grpc_port}\n"
        f"server,srv-1,{SCHOOL},,,,,,,127.0.0.1,root,{closed}\n"
    )
    imported = schoolctl(c.address, "inventory", "import", str(inventory))
    assert imported.code == 0, imported.err

    def probed() -> bool:
        aps = schoolctl(c.address, "aps", "list", "--json").json()
        servers = schoolctl(c.address, "servers", "list", "--json").json()
        return all(t.get("state") in ("up", "down") for t in [*aps, *servers])

    wait_until(probed, 30, "the access point and the server probed", step=0.5)
    checked = schoolctl(c.address, "uplink", "check", "--school", SCHOOL, timeout=60)
    assert checked.code == 0, checked


def _devices(tmp: Path, c: Controller) -> list[Agent]:
    """In school s1, panels that show lessons (rooms r101, r103) and panels whose kiosk
    program is missing (r102, r104: their lessons fail); in s2, a laptop."""
    kiosk = tmp / "kiosk.py"
    kiosk.write_text(FAKE_KIOSK)
    good = [sys.executable, str(kiosk), "{url}", str(tmp / "kiosk.pids")]
    missing = [str(tmp / "no-such-kiosk"), "{url}"]
    panels = [
        Agent(tmp, f"panel-{room[1:]}", "panel", SCHOOL, room, c.address, {"kiosk_argv": argv})
        for _, shows, fails in ROUNDS
        for room, argv in ((shows, good), (fails, missing))
    ]
    return [*panels, Agent(tmp, "laptop-201", "laptop", "s2", "r201", c.address)]


def _online(c: Controller, *device_ids: str) -> None:
    def up() -> bool:
        listed = schoolctl(c.address, "devices", "list", "--json")
        online = {d["device_id"] for d in listed.json() if d["status"] == "online"}
        return listed.code == 0 and set(device_ids) <= online

    wait_until(up, 30, f"{device_ids} online", step=0.5)


def _schedule(tmp: Path, site: LessonSite, start: float) -> Path:
    rows = ["school,room,start,end,class,subject,teacher,content_url,remote"]
    for offset, *rooms in ROUNDS:
        begin, end = start + offset, start + offset + LESSON
        for room in rooms:
            url = site.url(room)
            rows.append(f"{SCHOOL},{room},{_iso(begin)},{_iso(end)},7B,maths,,{url},no")
    path = tmp / "lessons.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _settled(c: Controller) -> list[str] | None:
    done = schoolctl(c.address, "lessons", "today", "--school", SCHOOL, "--json")
    if done.code != 0:
        return None
    states = sorted(lesson["state"] for lesson in done.json())
    return None if {"scheduled", "dispatched"} & set(states) else states


@dataclass(frozen=True)
class Failure:
    text: str
    # A metric it reads is not in Prometheus at all: asking again will not help.
    settled: bool


class Checker:
    """Asks Prometheus every query a dashboard or rule makes; collects the empty ones."""

    def __init__(self, prom: Prometheus) -> None:
        self.prom = prom
        self.recorded = {r.name: r for r in rules() if r.kind == "record"}

    def _missing(self, expr: str, have: set[str]) -> list[str]:
        """The metrics an expression reads that Prometheus has no series of; a recorded
        series is traced to the metrics its rule reads."""
        missing = sorted(metric_names(expr) - have)
        for name in sorted(recorded_names(expr) - have):
            rule = self.recorded.get(name)
            behind = self._missing(rule.expr, have) if rule else []
            missing.append(f"{name} (from {', '.join(behind) or 'metrics that are there'})")
        return missing

    def failures(self, school: str) -> list[Failure]:
        have = self.prom.names()
        asked: list[tuple[str, str]] = []
        for query in panel_queries():
            asked.append((f"panel {query.where()}", substitute(query.expr, school, "1m")))
        for rule in rules():
            asked.extend(self._rule_queries(rule))
        failed = []
        for where, expr in asked:
            shown = " ".join(expr.split())
            try:
                result = self.prom.query(expr)
            except PrometheusError as exc:
                failed.append(Failure(f"{where}: {exc}\n    {shown}", settled=False))
                continue
            if not result:
                missing = self._missing(expr, have)
                why = (
                    f"missing metric: {', '.join(missing)}"
                    if missing
                    else "no data although every metric it reads has series"
                )
                failed.append(Failure(f"{where}: empty, {why}\n    {shown}", bool(missing)))
        return failed

    @staticmethod
    def _rule_queries(rule: Rule) -> list[tuple[str, str]]:
        if rule.kind == "record":
            return [(f"record {rule.name}", rule.name), (f"record {rule.name} expr", rule.expr)]
        # An alert's expression answers only when it fires; with `bool` comparisons it
        # answers for every series it watches, which is what must exist.
        return [(f"alert {rule.name}", with_bool(rule.expr))]


def test_prometheus_has_data_for_every_panel_and_rule(tmp_path: Path, agents: list[Agent]) -> None:
    began = time.monotonic()
    (tmp_path / "prometheus").mkdir()
    prom: Prometheus | None = None
    with LessonSite() as site:
        c = _controller(tmp_path).start()
        try:
            devices = _devices(tmp_path, c)
            agents.extend(d.start() for d in devices)
            _online(c, *(d.device_id for d in devices))
            _infrastructure(tmp_path, c)
            prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{c.metrics_port}"])
            prom.start()
            # A stream that ends (agent_closed), an offline device, a refused call.
            devices[-1].stop()
            refused = schoolctl(c.address, "devices", "list", token="sfu_" + "x" * 43)
            assert refused.code != 0
            schedule = _schedule(tmp_path, site, float(int(time.time() + 4)))
            imported = schoolctl(c.address, "lessons", "import", str(schedule))
            assert imported.code == 0, imported.err
            states = wait_until(lambda: _settled(c), 60, "four lessons settled", step=0.5)
            assert states == ["failed", "failed", "held", "held"]

            # The last rule of the chain to have data: settled counters seen to move,
            # then recorded, then read by the alert.
            ratio = "school:schoolfleet_lessons_failed:ratio1d"
            wait_until(lambda: prom.query(ratio), 30, f"{ratio} recorded", step=0.5)
            ready = time.monotonic()

            [(_, variable, template)] = template_queries()
            assert (variable, template) == ("school", "label_values(schoolfleet_devices, school)")
            schools = prom.api("/api/v1/label/school/values", **{"match[]": "schoolfleet_devices"})
            assert {SCHOOL, "s2"} <= set(schools)

            groups = prom.api("/api/v1/rules")["groups"]
            loaded = [r for g in groups for r in g["rules"]]
            assert len(loaded) == len(rules())
            unhealthy = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
            assert unhealthy == []

            checker = Checker(prom)
            failed = checker.failures(SCHOOL)
            # Margin for a slow scrape or rule evaluation; a metric Prometheus has never
            # seen is not waited for.
            deadline = time.monotonic() + 15
            while any(not f.settled for f in failed) and time.monotonic() < deadline:
                time.sleep(1)
                failed = checker.failures(SCHOOL)
            print(
                f"timings: lessons settled and recorded {ready - began:.1f}s, "
                f"queries checked {time.monotonic() - began:.1f}s"
            )
            report = [f.text for f in failed]
            assert report == [], (
                f"{len(report)} of {len(panel_queries())} panel queries and "
                f"{len(rules())} rules have no data:\n" + "\n".join(report)
            )
        finally:
            if prom is not None:
                prom.stop()
            c.stop()


# Devices 0..9 already cover every school and kind the 500 have.
SCHOOLS = 5
KINDS = (fleet_pb2.DEVICE_KIND_PANEL, fleet_pb2.DEVICE_KIND_LAPTOP)


def _hello(i: int) -> bytes:
    message = agent_pb2.AgentMessage.FromString(
        wire.hello(f"sim-{i:04d}", f"school-{i % SCHOOLS}", f"r{i % 20}")
    )
    message.hello.kind = KINDS[i // SCHOOLS % len(KINDS)]
    return message.SerializeToString()


def _series(c: Controller, devices: int) -> set[str] | None:
    """``schoolfleet_*`` series on /metrics once every device's heartbeat is stored."""
    samples = c.metrics()
    counted = sum(v for k, v in samples.items() if k.startswith("schoolfleet_devices{"))
    stored = samples.get("schoolfleet_heartbeats_stored_total", 0)
    if counted != devices or stored < devices:
        return None
    return {k for k in samples if k.startswith("schoolfleet_")}


async def _grow(c: Controller, sizes: tuple[int, ...]) -> list[set[str]]:
    """Opens streams from this process (Hello, Welcome, one full heartbeat each) until
    there are each of ``sizes`` devices, and reads the series at each size."""
    channels: list[grpc.aio.Channel] = []
    calls: list[grpc.aio.StreamStreamCall[bytes, bytes]] = []
    body = wire.heartbeat_body(full=True)
    slots = asyncio.Semaphore(50)

    async def connect(i: int) -> None:
        async with slots:
            call, last_seq = await asyncio.wait_for(open_stream(c.address, channels, _hello(i)), 30)
            await call.write(wire.heartbeat(last_seq + 1, body))
            calls.append(call)

    seen: list[set[str]] = []
    try:
        opened = 0
        for size in sizes:
            await asyncio.gather(*(connect(i) for i in range(opened, size)))
            opened = size
            series = await asyncio.to_thread(
                wait_until, lambda n=size: _series(c, n), 60, f"{size} devices counted", 0.5
            )
            seen.append(series)
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*(channel.close() for channel in channels))
    return seen


def test_series_do_not_grow_with_devices(tmp_path: Path) -> None:
    c = Controller(tmp_path, env={"SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "10"}).start()
    try:
        few, many = asyncio.run(_grow(c, (10, 500)))
    finally:
        c.stop()
    print(f"schoolfleet_* series: {len(few)} with 10 devices, {len(many)} with 500")
    assert many == few
    schools = {s.split('school="')[1].split('"')[0] for s in few if 'school="' in s}
    assert schools == {f"school-{i}" for i in range(SCHOOLS)}
