"""Uplink checks with several controllers on one PostgreSQL store, in one process: each
controller its own store connections, uplink endpoint on port 0, tokens and schedule,
and the streams of its own devices; the agent's real fetch, sent (as a load balancer
may) to the other controller's endpoint.

Each school is measured once per slot by one controller: one holding a device able
to, the one holding the school server when there is one; the others let it be without
a line above DEBUG or a failure counted."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.uplink import fetch
from controller.loops import LoopFailures
from controller.store.rows import HeartbeatRow
from controller.stores import Stores, open_stores
from controller.uplink.checks import MeasureOrder, UplinkAnswer, UplinkChecks, UplinkSettings
from controller.uplink.endpoint import PATH_PREFIX, UplinkServer, serve
from controller.uplink.metrics import UplinkMetrics
from controller.uplink.plan import slot_offset
from controller.uplink.sql_tokens import SqlTokens
from inventory.model import DeviceIdentity, DeviceKind, Health
from inventory.uplink import UplinkState
from tests.haproxy import HaProxy
from tests.procs import Agent, Controller, free_port, wait_until

INTERVAL = 1.0
PREFER_WAIT = 0.25


@dataclass
class Replica:
    """One controller's uplink part and the device streams it holds."""

    name: str
    stores: Stores
    held: set[str]
    able: set[str]
    server: UplinkServer
    thread: threading.Thread
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    checks: UplinkChecks | None = None
    # Where its devices' fetches go: the other controller's endpoint.
    fetch_port: int = 0
    sent: list[tuple[str, MeasureOrder]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # The Courier the checks are given.
    def holds(self, device_id: str) -> bool:
        return device_id in self.held

    def can_measure(self, device_id: str) -> bool:
        return device_id in self.held and device_id in self.able

    def send(self, device_id: str, order: MeasureOrder) -> bool:
        self.sent.append((device_id, order))
        task = asyncio.get_running_loop().create_task(self._answer(device_id, order))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _answer(self, device_id: str, order: MeasureOrder) -> None:
        assert order.port == self.server.port  # the order names its own controller's
        url = f"http://127.0.0.1:{self.fetch_port}{order.path}"
        got = await asyncio.to_thread(fetch, url, order.bytes, order.timeout, threading.Event())
        assert self.checks is not None
        self.checks.answered(
            UplinkAnswer(
                device_id, order.command_id, not got.error, got.error, got.received, got.seconds
            )
        )


@pytest.fixture
def replicas(pg_url: str) -> Iterator[list[Replica]]:
    made: list[Replica] = []
    try:
        for name in ("a", "b"):
            stores = open_stores(pg_url)
            server, thread = serve("127.0.0.1:0", SqlTokens(stores.sql))
            made.append(Replica(name, stores, set(), set(), server, thread))
        a, b = made
        a.fetch_port, b.fetch_port = b.server.port, a.server.port
        yield made
    finally:
        for r in made:
            r.server.shutdown()
            r.server.server_close()
            r.thread.join(5)
            r.stores.close()


def online(r: Replica, device_id: str, school: str, kind: DeviceKind, *, able: bool) -> None:
    """The device's stream is on ``r``; ``able``: its agent measures uplinks."""
    now = time.time()
    identity = DeviceIdentity(device_id, kind, school, "r1")
    r.stores.devices.device_connected(identity, len(r.held) + 1, 60.0, now)
    r.stores.devices.record_messages(
        [HeartbeatRow(device_id, 1, now, Health(now, 1, 1, 1, 1, 0, 0, 0))]
    )
    r.held.add(device_id)
    if able:
        r.able.add(device_id)


def _slot(school: str, started_at: float) -> int:
    """Which of the school's slots a check started in."""
    return math.floor((started_at - slot_offset(school, INTERVAL)) / INTERVAL)


def test_two_controllers_measure_each_school_once_per_slot_from_its_best_device(
    replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replicas
    online(a, "a-pc", "s-a", DeviceKind.MONOBLOCK, able=True)
    online(b, "b-panel", "s-b", DeviceKind.PANEL, able=True)
    # The school server's stream is on b, a panel's on a: b measures, every time.
    online(a, "srv-panel", "s-srv", DeviceKind.PANEL, able=True)
    online(b, "srv-srv", "s-srv", DeviceKind.SERVER, able=True)
    # Alike on both: either measures, one of them per slot.
    online(a, "both-a", "s-both", DeviceKind.PANEL, able=True)
    online(b, "both-b", "s-both", DeviceKind.PANEL, able=True)
    # No agent able to: nobody measures, and nobody says so above DEBUG.
    online(a, "old-a", "s-old", DeviceKind.SERVER, able=False)
    online(b, "old-b", "s-old", DeviceKind.PANEL, able=False)
    failures = {r.name: LoopFailures(r.registry) for r in replicas}
    settings = UplinkSettings(INTERVAL, 20, 200_000, 5.0, 0, 0.5, PREFER_WAIT)

    async def main() -> None:
        with ThreadPoolExecutor(4) as executor:
            schedules = []
            for r in replicas:
                r.checks = UplinkChecks(
                    r.stores.uplink,
                    r.stores.devices,
                    executor,
                    r,
                    SqlTokens(r.stores.sql),
                    UplinkMetrics(r.registry),
                    replace(settings, port=r.server.port),
                    failures[r.name],
                )
                schedules.append(asyncio.create_task(r.checks.run()))
            await asyncio.sleep(3.6 * INTERVAL)
            for task in schedules:
                task.cancel()
            await asyncio.gather(*schedules, return_exceptions=True)
            # Checks claimed before the schedules stopped end by themselves.
            deadline = time.monotonic() + 10
            while any(r.tasks for r in replicas) or any(
                c.state is UplinkState.RUNNING for c in a.stores.uplink.latest_uplink_checks()
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            for r in replicas:
                assert r.checks is not None
                await r.checks.close()

    with caplog.at_level(logging.DEBUG, logger="controller.uplink"):
        asyncio.run(main())

    rows = a.stores.sql.read(
        "SELECT school_id, started_at, device_id, mbps, error FROM uplink_checks "
        "ORDER BY school_id, started_at"
    )
    assert {r["error"] for r in rows} == {""} and all(r["mbps"] > 0 for r in rows)
    by_school: dict[str, list[tuple[float, str]]] = {}
    for row in rows:
        by_school.setdefault(row["school_id"], []).append((row["started_at"], row["device_id"]))
    assert sorted(by_school) == ["s-a", "s-b", "s-both", "s-srv"]
    for school, checks in by_school.items():
        slots = [_slot(school, at) for at, _ in checks]
        # One check per slot, none missed, for the 3.6 intervals the schedules ran.
        assert slots == list(range(slots[0], slots[0] + len(slots))), (school, checks)
        assert len(slots) >= 3, (school, checks)
    assert {d for _, d in by_school["s-a"]} == {"a-pc"}
    assert {d for _, d in by_school["s-b"]} == {"b-panel"}
    assert {d for _, d in by_school["s-srv"]} == {"srv-srv"}
    assert {d for _, d in by_school["s-both"]} <= {"both-a", "both-b"}
    # Each order went to the controller holding the device; its fetch, to the other.
    assert len(a.sent) + len(b.sent) == len(rows)
    assert {d for d, _ in a.sent} <= a.able and {d for d, _ in b.sent} <= b.able
    for r in replicas:
        assert (
            r.registry.get_sample_value("schoolfleet_uplink_checks_total", {"result": "failed"})
            == 0
        )
        assert (
            r.registry.get_sample_value(
                "schoolfleet_loop_failures_total", {"loop": "uplink_checks"}
            )
            == 0
        )
    loud = [
        (r.name, r.levelname, r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.WARNING
        or ("not started" in r.getMessage() and r.levelno > logging.DEBUG)
    ]
    assert loud == []
    quiet = [r.getMessage() for r in caplog.records if "not started" in r.getMessage()]
    assert any("s-old" in m and "can measure here" in m for m in quiet), quiet
    assert any("made in its slot already" in m for m in quiet), quiet


def _get(port: int, path: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _racing_gets(ports: list[int], path: str) -> list[int]:
    """GETs of ``path``, one per port and all at once; their statuses."""
    barrier = threading.Barrier(len(ports))
    statuses: list[int] = []

    def get(port: int) -> None:
        barrier.wait()
        statuses.append(_get(port, path))

    threads = [threading.Thread(target=get, args=(p,)) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_of_fetches_racing_to_both_endpoints_with_one_token_one_gets_the_bytes(
    replicas: list[Replica],
) -> None:
    a, b = replicas
    issuer = SqlTokens(a.stores.sql)
    for _ in range(10):
        path = PATH_PREFIX + issuer.issue(100_000, 60, "school=s1 device=p1")
        statuses = _racing_gets([a.server.port, b.server.port] * 4, path)
        assert sorted(statuses) == [200] + [404] * 7


E2E_INTERVAL = 5.0


@pytest.mark.e2e
@pytest.mark.slow
def test_three_replicas_behind_haproxy_measure_each_school_once_per_slot(
    tmp_path: Path, pg_url: str, agents: list[Agent]
) -> None:
    """Real controllers on one PostgreSQL database, agents through HAProxy, and the
    uplink port balanced too (each replica's endpoint on its own loopback address, the
    same port): an order from one replica is fetched from whichever the balancer
    picks, and each school is measured once per slot, by its server."""
    uplink_port = free_port()
    env = {
        "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
        "SCHOOLFLEET_CONTROLLER_LEASE_SECONDS": "3",
        "SCHOOLFLEET_CONTROLLER_UPLINK_INTERVAL": str(E2E_INTERVAL),
        "SCHOOLFLEET_CONTROLLER_UPLINK_BYTES": "2000000",
    }
    replicas: list[Controller] = []
    balancers: list[HaProxy] = []
    try:
        for n in range(3):
            token = replicas[0].admin_token if replicas else ""
            listen = {"SCHOOLFLEET_CONTROLLER_UPLINK_LISTEN": f"127.0.0.{n + 2}:{uplink_port}"}
            c = Controller(
                tmp_path / f"c{n}", env={**env, **listen}, database_url=pg_url, admin_token=token
            )
            c.workdir.mkdir()
            replicas.append(c.start())
        (tmp_path / "lb-grpc").mkdir()
        (tmp_path / "lb-uplink").mkdir()
        grpc_lb = HaProxy(tmp_path / "lb-grpc", [("127.0.0.1", r.grpc_port) for r in replicas])
        balancers.append(grpc_lb.start())
        uplink_lb = HaProxy(
            tmp_path / "lb-uplink",
            [(f"127.0.0.{n + 2}", uplink_port) for n in range(3)],
            port=uplink_port,
        )
        balancers.append(uplink_lb.start())
        schools = ("s1", "s2", "s3")
        for school in schools:
            for device, kind in ((f"srv-{school}", "server"), (f"pc-{school}", "monoblock")):
                agents.append(Agent(tmp_path, device, kind, school, "r1", grpc_lb.address).start())

        def streams() -> list[float]:
            return [r.metrics()["schoolfleet_connected_streams"] for r in replicas]

        wait_until(lambda: sum(streams()) == 2 * len(schools), 40, "every agent connected")
        assert sum(1 for s in streams() if s) >= 2, f"streams spread: {streams()}"
        store = open_stores(pg_url)
        try:

            def measured_thrice() -> bool:
                rows = store.sql.read(
                    "SELECT school_id, COUNT(*) AS n FROM uplink_checks WHERE mbps IS NOT NULL "
                    "GROUP BY school_id"
                )
                return len(rows) == len(schools) and all(r["n"] >= 3 for r in rows)

            wait_until(measured_thrice, 5 * E2E_INTERVAL, "each school measured three times")
            time.sleep(1.0)  # a late check of a slot would be stored by now
            rows = store.sql.read(
                "SELECT school_id, started_at, device_id, error FROM uplink_checks "
                "ORDER BY school_id, started_at"
            )
        finally:
            store.close()
    finally:
        for lb in balancers:
            lb.stop()
        for c in replicas:
            c.stop()

    assert {r["error"] for r in rows} == {""}
    for school in schools:
        mine = [r for r in rows if r["school_id"] == school]
        # The first may be any replica's: one that came upon the school online later
        # than another (its schedule was idle until then) finds the slot taken. From
        # then on every replica wakes at the school's slot, and the server's claims first.
        assert {r["device_id"] for r in mine[1:]} == {f"srv-{school}"}, mine
        slots = [
            math.floor((r["started_at"] - slot_offset(school, E2E_INTERVAL)) / E2E_INTERVAL)
            for r in mine
        ]
        assert slots == list(range(slots[0], slots[0] + len(slots))), (school, mine)
    # Which replica sent each order, and which served its transfer: every transfer
    # served once, some by a replica that never ordered a check of that device.
    logs = [r.log_text() for r in replicas]
    label = r"school=(\S+) device=(\S+)"
    started = [re.findall(rf"uplink check started {label}", t) for t in logs]
    served = [re.findall(rf"uplink transfer sent {label}", t) for t in logs]
    assert sum(map(len, started)) == sum(map(len, served)) == len(rows)
    elsewhere = [
        pair
        for mine, theirs in zip(started, served, strict=True)
        for pair in theirs
        if pair not in mine
    ]
    assert elsewhere, f"every fetch reached the replica that ordered it: {served}"
    for text in logs:
        assert "uplink check not started" not in text
        assert "uplink check failed" not in text
        assert "uplink request refused" not in text
