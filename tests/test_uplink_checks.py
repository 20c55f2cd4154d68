"""Uplink checks from start to result, in one process: a real store, the real
endpoint on port 0, the agent's real fetch; only the device stream is replaced, by a
courier that hands the order to the fetch and its answer back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry

from agent.uplink import fetch
from controller.errors import UplinkUnavailable
from controller.fleet.store import DeviceStore
from controller.loops import LoopFailures
from controller.store.rows import HeartbeatRow
from controller.stores import Stores, sqlite_stores
from controller.uplink.checks import MeasureOrder, UplinkAnswer, UplinkChecks, UplinkSettings
from controller.uplink.endpoint import serve
from controller.uplink.metrics import UplinkCollector, UplinkMetrics
from controller.uplink.sql_tokens import SqlTokens
from inventory.model import DeviceIdentity, DeviceKind, Health
from inventory.uplink import UplinkCheck, UplinkState

T = TypeVar("T")


class Courier:
    """Delivers orders to the agent's fetch, answering after it; counts orders in flight."""

    def __init__(self, able: set[str], answer: bool = True) -> None:
        self.able = able
        self.answer = answer
        self.sent: list[tuple[str, MeasureOrder]] = []
        self.checks: UplinkChecks | None = None
        self.in_flight: dict[str, int] = {}
        self.most = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def holds(self, device_id: str) -> bool:
        return True  # one controller: every stream is here

    def can_measure(self, device_id: str) -> bool:
        return device_id in self.able

    def send(self, device_id: str, order: MeasureOrder) -> bool:
        self.sent.append((device_id, order))
        if self.answer:
            task = asyncio.get_running_loop().create_task(self._answer(device_id, order))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return True

    async def _answer(self, device_id: str, order: MeasureOrder) -> None:
        school = order.command_id.split("-")[1]
        self.in_flight[school] = self.in_flight.get(school, 0) + 1
        self.most = max(self.most, sum(self.in_flight.values()))
        assert self.in_flight[school] == 1, f"two checks of {school} at once"
        url = f"http://127.0.0.1:{order.port}{order.path}"
        got = await asyncio.to_thread(fetch, url, order.bytes, order.timeout, threading.Event())
        await asyncio.sleep(0.05)  # long enough for others to overlap, were they allowed
        self.in_flight[school] -= 1
        assert self.checks is not None
        self.checks.answered(
            UplinkAnswer(
                device_id, order.command_id, not got.error, got.error, got.received, got.seconds
            )
        )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Stores]:
    s = sqlite_stores(tmp_path / "c.db")
    try:
        yield s
    finally:
        s.close()


def online(store: Stores, device_id: str, school: str, kind: DeviceKind) -> None:
    now = time.time()
    store.devices.device_connected(DeviceIdentity(device_id, kind, school, "r1"), 1, 60.0, now)
    store.devices.record_messages(
        [HeartbeatRow(device_id, 1, now, Health(now, 1, 1, 1, 1, 0, 0, 0))]
    )


def run(
    store: Stores,
    courier: Courier,
    scenario: Callable[[UplinkChecks], Awaitable[T]],
    *,
    interval: float = 0.0,
    concurrency: int = 20,
    timeout: float = 10.0,
    failures: LoopFailures | None = None,
    devices: DeviceStore | None = None,
) -> tuple[T, CollectorRegistry]:
    tokens = SqlTokens(store.sql)
    server, thread = serve("127.0.0.1:0", tokens)
    registry = CollectorRegistry()
    registry.register(UplinkCollector(store.uplink, store.infra.school_ids))
    try:
        with ThreadPoolExecutor(2) as executor:
            checks = UplinkChecks(
                store.uplink,
                devices or store.devices,
                executor,
                courier,
                tokens,
                UplinkMetrics(registry),
                UplinkSettings(interval, concurrency, 2_000_000, timeout, server.port, 0.5),
                failures,
            )
            courier.checks = checks

            async def main() -> T:
                try:
                    return await scenario(checks)
                finally:
                    await checks.close()

            return asyncio.run(main()), registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_check_measures_from_the_server_and_is_stored_and_exported(store: Stores) -> None:
    online(store, "p1", "s1", DeviceKind.PANEL)
    online(store, "srv1", "s1", DeviceKind.SERVER)
    courier = Courier({"p1", "srv1"})

    async def scenario(checks: UplinkChecks) -> UplinkCheck:
        return await checks.check("s1")

    check, registry = run(store, courier, scenario)
    assert [d for d, _ in courier.sent] == ["srv1"]
    assert check.state is UplinkState.OK and check.device_id == "srv1"
    assert check.bytes == 2_000_000 and check.mbps is not None and check.mbps > 1
    assert store.uplink.latest_uplink_checks("s1") == [check]
    assert (
        registry.get_sample_value("schoolfleet_school_uplink_mbps", {"school": "s1"}) == check.mbps
    )
    assert registry.get_sample_value("schoolfleet_uplink_checks_total", {"result": "ok"}) == 1
    assert registry.get_sample_value("schoolfleet_uplink_checks_total", {"result": "failed"}) == 0


def test_two_hand_checks_of_one_school_share_one_check(store: Stores) -> None:
    online(store, "p1", "s1", DeviceKind.PANEL)
    courier = Courier({"p1"})

    async def scenario(checks: UplinkChecks) -> list[UplinkCheck]:
        return list(await asyncio.gather(checks.check("s1"), checks.check("s1")))

    (first, second), _ = run(store, courier, scenario)
    assert first == second and len(courier.sent) == 1


def test_a_school_without_a_device_able_to_measure_is_told_why(store: Stores) -> None:
    online(store, "old1", "s2", DeviceKind.PANEL)
    courier = Courier(set())

    async def scenario(checks: UplinkChecks) -> list[str]:
        errors = []
        for school in ("s1", "s2"):
            with pytest.raises(UplinkUnavailable) as caught:
                await checks.check(school)
            errors.append(str(caught.value))
        return errors

    errors, _ = run(store, courier, scenario)
    assert errors == [
        "school s1 has no online device: a check needs one to measure from",
        "none of school s2's 1 online device(s) can measure here: their agents are too old, "
        "or connected to another controller",
    ]
    assert store.uplink.latest_uplink_checks() == []


def test_a_device_that_never_answers_fails_the_check_after_its_deadline(
    store: Stores,
) -> None:
    online(store, "p1", "s1", DeviceKind.PANEL)
    courier = Courier({"p1"}, answer=False)

    async def scenario(checks: UplinkChecks) -> tuple[UplinkCheck, float]:
        started = time.monotonic()
        check = await checks.check("s1")
        return check, time.monotonic() - started

    (check, took), registry = run(store, courier, scenario, timeout=0.5)
    assert check.state is UplinkState.FAILED and check.error == "no answer from p1 in 1s"
    assert 0.9 < took < 5
    assert registry.get_sample_value("schoolfleet_uplink_checks_total", {"result": "failed"}) == 1


def test_the_schedule_checks_every_school_within_the_city_wide_limit(store: Stores) -> None:
    schools = [f"s{n}" for n in range(6)]
    for school in schools:
        online(store, f"p-{school}", school, DeviceKind.PANEL)
    courier = Courier({f"p-{s}" for s in schools})

    async def scenario(checks: UplinkChecks) -> None:
        # Started an interval ago: every school's slot has passed once.
        await checks.tick(time.time() - 1.0)
        deadline = time.monotonic() + 20
        while len(store.uplink.latest_uplink_checks(measured=True)) < len(schools):
            assert time.monotonic() < deadline, store.uplink.latest_uplink_checks()
            await asyncio.sleep(0.05)

    run(store, courier, scenario, interval=1.0, concurrency=2)
    assert courier.most == 2
    assert sorted(o.command_id.split("-")[1] for _, o in courier.sent) == schools


def test_a_token_the_store_cannot_keep_fails_the_check_with_the_reason(store: Stores) -> None:
    online(store, "p1", "s1", DeviceKind.PANEL)
    courier = Courier({"p1"})
    store.sql.write("DROP TABLE uplink_tokens")

    async def scenario(checks: UplinkChecks) -> UplinkCheck:
        return await checks.check("s1")

    check, registry = run(store, courier, scenario)
    assert courier.sent == []
    assert check.state is UplinkState.FAILED
    assert check.error == (
        f"no transfer token: database {store.sql.name}: no such table: uplink_tokens"
    )
    assert store.uplink.latest_uplink_checks("s1") == [check]
    assert registry.get_sample_value("schoolfleet_uplink_checks_total", {"result": "failed"}) == 1
