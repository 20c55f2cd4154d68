"""Debian's Prometheus scrapes a real controller that real agents report to, with
deploy/prometheus/rules.yml loaded (its for: shortened): a scripted day of lessons held,
partly held and failed, a school cut off and a failing uplink comes out exactly on every
lessons panel and rule, the day's alerts fire, and no panel is empty where the truth is
0. And the series count does not grow with devices."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import yaml

from bench import wire
from bench.loadgen import Call, open_stream
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from tests.lesson_site import FAKE_KIOSK, LessonSite
from tests.procs import Agent, Controller, free_port, init_controller_ca, schoolctl, wait_until
from tests.prom import (
    RULES,
    Prometheus,
    PrometheusError,
    Rule,
    metric_names,
    panel_queries,
    quick_rules,
    recorded_names,
    rules,
    substitute,
    template_queries,
    with_bool,
)
from tests.replicas import city

pytestmark = pytest.mark.e2e

SCHOOL = "s1"
# s1 holds the lessons; s2 is cut off during a lesson of its own; s3's uplink checks
# fail; s4 is only in the inventory. Every one of them is on every list, with 0.
SCHOOLS_OF_THE_DAY = ("s1", "s2", "s3", "s4")
# Lessons of 3 s, all in one round: panels that show them (r101, r103), panels whose
# kiosk program is missing (r102, r104: failed, no-program), a room with one of each
# (r105: partly held), and a room whose only panel is offline (r107: failed, not
# reached). In s2, a 20-minute lesson in a room without a panel (no-device) keeps the
# school in session while its laptop is offline.
LESSON = 3.0
SHOWS = ("r101", "r103")
FAILS = ("r102", "r104")
MIXED = "r105"
OFFLINE = "r107"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _controller(tmp: Path) -> Controller:
    # A CA in its data folder, as every controller in production has (the certificate
    # figures and their alerts read it); the lab's devices stream in plaintext.
    init_controller_ca(tmp / "data")
    return Controller(
        tmp,
        env={
            "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
            "SCHOOLFLEET_CONTROLLER_CONTENT_HOSTS": '["127.0.0.1"]',
            "SCHOOLFLEET_CONTROLLER_LESSON_LEAD": "1",
            "SCHOOLFLEET_CONTROLLER_LESSON_SETTLE": "1",
            "SCHOOLFLEET_CONTROLLER_LESSON_ON_TIME": "2",
            # Probes every second: of the access point and server below, on loopback.
            "SCHOOLFLEET_CONTROLLER_PROBE_INTERVAL": "1",
            # Checks by hand only; an unanswered one fails 2 + 15 s (the grace) later.
            "SCHOOLFLEET_CONTROLLER_UPLINK_INTERVAL": "0",
            "SCHOOLFLEET_CONTROLLER_UPLINK_TIMEOUT": "2",
            "SCHOOLFLEET_CONTROLLER_UPLINK_BYTES": "5000000",
        },
    )


def _infrastructure(tmp: Path, c: Controller) -> None:
    """The four schools; in s1 an access point that answers (the controller's own port,
    on loopback) and a server that does not (a closed port), probed; and one uplink
    check of s1."""
    closed = free_port()
    inventory = tmp / "inventory.csv"
    inventory.write_text(
        "type,id,school,room,name,location,model,mac,bssids,address,ssh_user,ssh_port\n"
        + "".join(f"school,{s},,,School {s},,,,,,,\n" for s in SCHOOLS_OF_THE_DAY)
        + f"ap,ap-1,{SCHOOL},r101,,,U6,,aa:bb:cc:00:01:01,127.0.0.1,,{c.grpc_port}\n"
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
    """s1's panels (see LESSON) and s2's laptop."""
    kiosk = tmp / "kiosk.py"
    kiosk.write_text(FAKE_KIOSK)
    good = [sys.executable, str(kiosk), "{url}", str(tmp / "kiosk.pids")]
    missing = [str(tmp / "no-such-kiosk"), "{url}"]
    rooms = [
        *((r, f"panel-{r[1:]}", good) for r in SHOWS),
        *((r, f"panel-{r[1:]}", missing) for r in FAILS),
        (MIXED, "panel-105", good),
        (MIXED, "panel-106", missing),
        (OFFLINE, "panel-107", good),
    ]
    panels = [
        Agent(tmp, device, "panel", SCHOOL, room, c.address, {"kiosk_argv": argv})
        for room, device, argv in rooms
    ]
    return [*panels, Agent(tmp, "laptop-201", "laptop", "s2", "r201", c.address)]


def _online(c: Controller, *device_ids: str) -> None:
    def up() -> bool:
        listed = schoolctl(c.address, "devices", "list", "--json")
        online = {d["device_id"] for d in listed.json() if d["status"] == "online"}
        return listed.code == 0 and set(device_ids) <= online

    wait_until(up, 30, f"{device_ids} online", step=0.5)


def _offline(c: Controller, *device_ids: str) -> None:
    def down() -> bool:
        listed = schoolctl(c.address, "devices", "list", "--status", "offline", "--json")
        return listed.code == 0 and set(device_ids) <= {d["device_id"] for d in listed.json()}

    wait_until(down, 30, f"{device_ids} offline", step=0.5)


def _schedule(tmp: Path, site: LessonSite, start: float) -> Path:
    rows = ["school,room,start,end,class,subject,teacher,content_url,remote"]
    for room in (*SHOWS, *FAILS, MIXED, OFFLINE):
        begin, end = _iso(start), _iso(start + LESSON)
        rows.append(f"{SCHOOL},{room},{begin},{end},7B,maths,,{site.url(room)},no")
    end = _iso(start + 1200)
    rows.append(f"s2,r201,{_iso(start)},{end},5A,art,,{site.url('r201')},no")
    path = tmp / "lessons.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _settled(c: Controller) -> list[str] | None:
    done = schoolctl(c.address, "lessons", "today", "--school", SCHOOL, "--json")
    if done.code != 0:
        return None
    states = sorted(lesson["state"] for lesson in done.json())
    return None if {"scheduled", "dispatched"} & set(states) else states


class SilentServer:
    """A school server on a stream of its own that sends heartbeats and never answers a
    command: its school's uplink checks fail for want of an answer."""

    def __init__(self, address: str, device_id: str, school: str) -> None:
        self._address = address
        self._hello = agent_pb2.AgentMessage.FromString(wire.hello(device_id, school, ""))
        self._hello.hello.kind = fleet_pb2.DEVICE_KIND_SERVER
        self._hello.hello.capabilities.append("uplink")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        channels: list[grpc.aio.Channel] = []
        call, seq = await open_stream(self._address, channels, self._hello.SerializeToString())
        body = wire.heartbeat_body(full=True)
        # It reads what the controller sends (acks, the check it never answers), as a
        # device does; an end of the stream is said, not left to look like an outage.
        reader = asyncio.create_task(self._drain(call))
        try:
            while not self._stop.is_set() and not reader.done():
                seq += 1
                await call.write(wire.heartbeat(seq, body))
                await asyncio.sleep(0.3)
        finally:
            call.cancel()
            reader.cancel()
            await asyncio.gather(*(channel.close() for channel in channels))

    async def _drain(self, call: Call) -> None:
        while isinstance(await call.read(), bytes):
            pass
        if not self._stop.is_set():
            print(f"SilentServer: the controller ended the stream: {await call.code()}")


@dataclass(frozen=True)
class Failure:
    text: str
    # A metric it reads is not in Prometheus at all: asking again will not help.
    settled: bool


# What a school without devices, lessons or a measurement has no value of.
_UNDEFINED_WITHOUT_DATA = (
    "schoolfleet_school_uplink_mbps",
    "school:schoolfleet_devices_offline:ratio",
    "school:schoolfleet_lessons_failing:ratio",
)
# Per-rollout gauges have series only while a rollout is unfinished: with none, their
# panels are rightly empty (the truth is "no rollout", not 0).
_PER_ROLLOUT = ("schoolfleet_rollout_info", "schoolfleet_rollout_progress", "_waiting_hosts")


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

    def failures(self, school: str, undefined: tuple[str, ...] = ()) -> list[Failure]:
        """Empty answers, except of panels reading one of ``undefined``."""
        have = self.prom.names()
        rollouts = self.prom.values("sum(schoolfleet_rollouts)")
        no_rollout = rollouts == {(): 0.0}
        asked: list[tuple[str, str]] = []
        for query in panel_queries():
            if no_rollout and any(name in query.expr for name in _PER_ROLLOUT):
                continue
            if any(name in query.expr for name in undefined):
                continue
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


def _by(label: str, **values: float) -> dict[tuple[tuple[str, str], ...], float]:
    return {((label, k.replace("_", "-")),): v for k, v in values.items()}


def _schools(**values: float) -> dict[tuple[tuple[str, str], ...], float]:
    """Every school of the day: the values given, 0 for the others."""
    return {(("school", s),): values.get(s, 0.0) for s in SCHOOLS_OF_THE_DAY}


# What the scripted day comes to in s1 (and the city), as the store has it.
S1_STATES = _by("state", scheduled=0, dispatched=0, held=2, partly_held=1, failed=3, no_device=0)
CITY_STATES = {**S1_STATES, (("state", "no-device"),): 1.0}
PANELS_NOT_SHOWING = _by(
    "result", no_program=3, url_refused=0, crashed=0, no_network=0, not_reached=1
)
UNDER_WAY = _by("state", starting=0, showing=0, not_showing=0)
ONE: dict[tuple[tuple[str, str], ...], float] = {(): 1.0}
# Every lesson query of a dashboard (s1 chosen in the school dashboard) and of a
# recording rule, and exactly what it must return.
EXACT: dict[str, dict[tuple[tuple[str, str], ...], float]] = {
    "sum(schoolfleet_lessons_today)": {(): 7},
    'sum(schoolfleet_lessons_today{state="held"})': {(): 2},
    'sum(schoolfleet_lessons_today{state="partly-held"})': {(): 1},
    'sum(schoolfleet_lessons_today{state="failed"})': {(): 3},
    'sum(schoolfleet_lessons_under_way{state="not-showing"})': {(): 0},
    "count(school:schoolfleet_lessons_failing:ratio > 0.1 and on (school) "
    "school:schoolfleet_lessons_failing:count >= 3) or vector(0)": ONE,
    "sum by (state) (schoolfleet_lessons_today)": CITY_STATES,
    "sum by (state) (schoolfleet_lessons_under_way)": UNDER_WAY,
    "school:schoolfleet_lessons_failing:ratio": {(("school", "s1"),): 0.5},
    "school:schoolfleet_lessons_failing:count": _schools(s1=3),
    "school:schoolfleet_lessons_started:count": _schools(s1=6),
    'sum by (result) (schoolfleet_lesson_panels_today{result!~"launched|pending"})': (
        PANELS_NOT_SHOWING
    ),
    'sum(schoolfleet_lesson_panels_today{result="launched"})': {(): 3},
    "sum by (school) (schoolfleet_lessons_today)": _schools(s1=6, s2=1),
    'sum by (school) (schoolfleet_lessons_today{state="held"})': _schools(s1=2),
    'sum by (school) (schoolfleet_lessons_today{state="partly-held"})': _schools(s1=1),
    'sum by (school) (schoolfleet_lessons_today{state="failed"})': _schools(s1=3),
    'sum by (school) (schoolfleet_lessons_under_way{state="not-showing"})': _schools(),
    'sum by (state) (schoolfleet_lessons_today{school=~"s1"})': S1_STATES,
    'sum by (result) (schoolfleet_lesson_panels_today{school=~"s1",result!~"launched|pending"})': (
        PANELS_NOT_SHOWING
    ),
    'sum(schoolfleet_lesson_panels_today{school=~"s1",result="launched"})': {(): 3},
    'sum by (state) (schoolfleet_lessons_under_way{school=~"s1"})': UNDER_WAY,
    'school:schoolfleet_lessons_failing:ratio{school=~"s1"}': {(("school", "s1"),): 0.5},
    'sum by (school) (schoolfleet_lessons_today{school=~"s1"})': {(("school", "s1"),): 6},
    # The other recording rules.
    "school:schoolfleet_devices:count": _schools(s1=7, s2=1, s3=1),
    "school:schoolfleet_devices_offline:count": _schools(s1=1, s2=1),
    "school:schoolfleet_devices_offline:ratio": {
        (("school", "s1"),): 1 / 7,
        (("school", "s2"),): 1.0,
        (("school", "s3"),): 0.0,
    },
    # s1 measured loopback's speed; s2 and s4 never measured, s3's check failed.
    "school:schoolfleet_uplink_mbps:under_target": {
        (("school", s),): 0.0 for s in ("s2", "s3", "s4")
    },
    "school:schoolfleet_servers_down:count": _schools(s1=1),
    "school:schoolfleet_access_points_down:ratio": {(("school", "s1"),): 0.0},
}
# Lesson queries whose value is not a count of the day.
_NOT_EXACT = ("latency", "rollout")


def _lesson_queries() -> set[str]:
    """Every dashboard query about lessons, as sent for s1, and the lesson rules."""
    found = {
        substitute(q.expr, SCHOOL, "1m")
        for q in panel_queries()
        if "lesson" in q.expr and not any(word in q.expr for word in _NOT_EXACT)
    }
    found |= {r.name for r in rules() if r.kind == "record" and "lesson" in r.name}
    return found


def _exact(prom: Prometheus) -> list[str]:
    """The queries of EXACT whose answer differs, with both."""
    wrong = []
    for expr, expected in EXACT.items():
        got = prom.values(expr)
        if got.keys() != expected.keys() or any(
            abs(got[k] - v) > 1e-9 for k, v in expected.items()
        ):
            wrong.append(f"{expr}\n    expected {expected}\n    got      {got}")
    return wrong


@pytest.mark.slow
def test_a_scripted_day_is_exact_on_every_panel_and_rule(
    tmp_path: Path, agents: list[Agent]
) -> None:
    assert _lesson_queries() <= set(EXACT), "a lesson query has no expected value"
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
            rule_file = quick_rules(tmp_path / "rules.yml")
            prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{c.metrics_port}"], rule_file)
            prom.start()
            # s1's panel-107 goes offline before its lesson; s2 is cut off; s3's uplink
            # check goes unanswered; a refused call.
            by_id = {d.device_id: d for d in devices}
            by_id["panel-107"].stop()
            by_id["laptop-201"].stop()
            _offline(c, "panel-107", "laptop-201")
            refused = schoolctl(c.address, "devices", "list", token="sfu_" + "x" * 43)
            assert refused.code != 0
            with SilentServer(c.address, "srv-3", "s3"):
                _online(c, "srv-3")
                uplink = threading.Thread(
                    target=schoolctl, args=(c.address, "uplink", "check", "--school", "s3")
                )
                uplink.start()
                schedule = _schedule(tmp_path, site, float(int(time.time() + 4)))
                imported = schoolctl(c.address, "lessons", "import", str(schedule))
                assert imported.code == 0, imported.err
                states = wait_until(lambda: _settled(c), 60, "s1's lessons settled", step=0.5)
                assert states == ["failed", "failed", "failed", "held", "held", "partly-held"]
                uplink.join(60)
                failed_check = schoolctl(c.address, "uplink", "list", "--school", "s3", "--json")
                assert failed_check.json()[0]["latest"]["error"], failed_check.out

                # Once Prometheus has scraped the settled day, every figure is exact.
                try:
                    wait_until(lambda: _exact(prom) == [], 30, "exact figures", step=0.5)
                except AssertionError:
                    raise AssertionError("\n".join(_exact(prom))) from None
                settled = time.monotonic()

                # The alerts of the day fire (their for: shortened to a second here).
                expected = {
                    ("SchoolCutOff", "s2"),
                    ("SchoolUplinkFailing", "s3"),
                    ("SchoolUplinkNeverMeasured", "s2"),
                    ("SchoolUplinkNeverMeasured", "s4"),
                    ("SchoolLessonsFailing", SCHOOL),
                    ("SchoolServerDown", SCHOOL),
                }
                wait_until(lambda: expected <= prom.firing(), 20, "the day's alerts", step=0.5)
                fired = prom.firing()
                assert ("SchoolCutOff", SCHOOL) not in fired
                assert not {
                    a for a in fired if a[1] == "s4" and a[0] != "SchoolUplinkNeverMeasured"
                }

                # Still beside srv-3: out of its block it stops sending, and s3 goes
                # offline before the last exact check.
                [(_, variable, template)] = template_queries()
                assert (variable, template) == (
                    "school",
                    "label_values(schoolfleet_devices, school)",
                )
                schools = prom.api(
                    "/api/v1/label/school/values", **{"match[]": "schoolfleet_devices"}
                )
                assert set(SCHOOLS_OF_THE_DAY) <= set(schools)

                groups = prom.api("/api/v1/rules")["groups"]
                loaded = [r for g in groups for r in g["rules"]]
                assert len(loaded) == len(rules())
                unhealthy = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
                assert unhealthy == []

                # No panel is empty: for one school, for several, and for All.
                checker = Checker(prom)
                report = [
                    f.text for school in (SCHOOL, "s1|s2", ".+") for f in checker.failures(school)
                ]
                # s4 has no device, lesson or measurement: a share of nothing and a speed
                # never measured have no value (its tables show 0 devices, 0 lessons and
                # "never measured"); every count it has is 0, and shown.
                report += [f.text for f in checker.failures("s4", _UNDEFINED_WITHOUT_DATA)]
                print(
                    f"timings: day settled and exact {settled - began:.1f}s, "
                    f"queries checked {time.monotonic() - began:.1f}s"
                )
                assert report == [], (
                    f"{len(report)} of {len(panel_queries())} panel queries and "
                    f"{len(rules())} rules have no data:\n" + "\n".join(report)
                )
                assert _exact(prom) == []
        finally:
            if prom is not None:
                prom.stop()
            c.stop()


def test_the_live_rules_differ_from_the_shipped_ones_only_in_for(tmp_path: Path) -> None:
    quick = yaml.safe_load(quick_rules(tmp_path / "rules.yml").read_text())
    shipped = yaml.safe_load(RULES.read_text())
    for group in (*quick["groups"], *shipped["groups"]):
        for rule in group["rules"]:
            rule.pop("for", None)
    assert quick == shipped


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


def test_three_controllers_on_one_store_are_counted_once(
    tmp_path: Path, pg_url: str, agents: list[Agent]
) -> None:
    """Prometheus scrapes three replicas: the store's figures come from one of them, the
    streams from each, and the rules' sums are the store's counts exactly."""
    env = {
        "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
        "SCHOOLFLEET_CONTROLLER_LEASE_SECONDS": "3",
    }
    (tmp_path / "prometheus").mkdir()
    with city(tmp_path, pg_url, env) as town:
        placed = [("s1", "panel"), ("s1", "panel"), ("s1", "laptop"), ("s2", "panel")] * 2
        for n, (school, kind) in enumerate(placed):
            agents.append(
                Agent(tmp_path, f"{kind}-{n}", kind, school, "r1", town.lb.address).start()
            )

        def online() -> bool:
            devices = town.devices()
            return len(devices) == len(placed) and all(
                d["status"] == "online" for d in devices.values()
            )

        wait_until(online, 40, "every device online")
        targets = [f"127.0.0.1:{r.metrics_port}" for r in town.replicas]
        prom = Prometheus(tmp_path / "prometheus", targets, quick_rules(tmp_path / "rules.yml"))
        prom.start()
        try:
            expected = {
                "count(up == 1)": {(): 3.0},
                "sum(schoolfleet_connected_streams)": {(): float(len(placed))},
                'sum by (school, kind) (schoolfleet_devices{status="online"})': {
                    (("kind", "laptop"), ("school", "s1")): 2.0,
                    (("kind", "panel"), ("school", "s1")): 4.0,
                    (("kind", "panel"), ("school", "s2")): 2.0,
                    (("kind", "monoblock"), ("school", "s1")): 0.0,
                    (("kind", "monoblock"), ("school", "s2")): 0.0,
                    (("kind", "laptop"), ("school", "s2")): 0.0,
                    (("kind", "server"), ("school", "s1")): 0.0,
                    (("kind", "server"), ("school", "s2")): 0.0,
                },
                "school:schoolfleet_devices:count": {
                    (("school", "s1"),): 6.0,
                    (("school", "s2"),): 2.0,
                },
                'sum(schoolfleet_lease_held{lease="store-gauges"})': {(): 1.0},
                'sum(schoolfleet_lease_held{lease="lesson-dispatcher"})': {(): 1.0},
                "count(schoolfleet_devices)": {(): 16.0},
            }

            def wrong() -> list[str]:
                return [
                    f"{expr}: {prom.values(expr)} != {want}"
                    for expr, want in expected.items()
                    if prom.values(expr) != want
                ]

            try:
                wait_until(lambda: wrong() == [], 30, "the sums exact", step=0.5)
            except AssertionError:
                raise AssertionError("\n".join(wrong())) from None
            per_instance = prom.api(
                "/api/v1/query", query="count by (instance) (schoolfleet_connected_streams)"
            )["result"]
            assert len(per_instance) == 3, "each controller's own streams, by instance"
        finally:
            prom.stop()
