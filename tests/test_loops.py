"""Every background loop survives a store that fails: the pass is logged, counted in
schoolfleet_loop_failures_total{loop} and tried again after a backoff, and the loop's
work is done once the store answers. In one process: real SQLite and the real loops;
the store fails only where a test says (``FailingFirst``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from controller.errors import StoreError
from controller.fleet.store import DeviceStore
from controller.infra.probe_check import Checked, ProbeSettings
from controller.infra.probes import Prober
from controller.lessons.dispatcher import Dispatcher, LaunchOrder
from controller.lessons.store import LessonStore
from controller.loops import LOOPS, Backoff, LoopFailures, Retry
from controller.rollouts.engine import EngineSettings, RolloutEngine
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.runner import RunnerSettings, WaveJob, WaveRun
from controller.rollouts.slices import SliceStore
from controller.rollouts.store import NewHost, RolloutStore
from controller.stores import Stores, sqlite_stores
from controller.uplink.checks import UplinkChecks
from inventory.infra import AccessPoint, ProbeResult, ProbeTarget, Room, School, Server
from inventory.lessons import Lesson
from inventory.model import DeviceIdentity, DeviceKind
from inventory.rollouts import Amount, HostOutcome, HostResult, RolloutSpec, RolloutState
from tests.test_uplink_checks import Courier, online
from tests.test_uplink_checks import run as run_uplink


class FailingFirst:
    """The real store, but ``method``'s first ``times`` calls raise StoreError."""

    def __init__(self, store: object, failing: dict[str, int]) -> None:
        self._store = store
        self._left = dict(failing)
        self._lock = threading.Lock()
        self.calls: dict[str, int] = dict.fromkeys(failing, 0)

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name not in self._left:
            return real

        def call(*args: object, **kwargs: object) -> object:
            with self._lock:
                self.calls[name] += 1
                fail = self._left[name] > 0
                self._left[name] -= fail
            if fail:
                raise StoreError(f"database is locked (injected into {name})")
            return real(*args, **kwargs)

        return call


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Stores]:
    s = sqlite_stores(tmp_path / "c.db")
    try:
        yield s
    finally:
        s.close()


def failures(registry: CollectorRegistry, loop: str) -> float | None:
    return registry.get_sample_value("schoolfleet_loop_failures_total", {"loop": loop})


async def until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_the_backoff_doubles_to_its_cap_jittered_within_half() -> None:
    backoff = Backoff(first=0.5, cap=60.0)
    assert [backoff.delay(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff.delay(50, lambda: 1.0) == 60.0
    assert backoff.delay(1_000_000, lambda: 0.0) == 30.0
    assert backoff.delay(3, lambda: 0.0) == 1.0


def test_every_loop_is_exported_at_zero_and_a_retry_counts_logs_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    counted = LoopFailures(registry)
    assert {loop: failures(registry, loop) for loop in LOOPS} == dict.fromkeys(LOOPS, 0.0)
    retry = Retry("probes", counted, Backoff(first=1.0, cap=8.0))
    with caplog.at_level(logging.INFO, "controller.loops"):
        waits = [retry.failed(StoreError("disk I/O error")) for _ in range(5)]
        retry.succeeded()
    assert all(0.5 <= w <= 8.0 for w in waits) and waits[-1] >= 4.0
    assert failures(registry, "probes") == 5
    assert failures(registry, "rollout_engine") == 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("loop pass failed loop=probes failures_in_a_row=1 retry_in=")
    assert caplog.records[0].exc_info is not None
    assert lines[-1] == "loop recovered loop=probes after_failures=5"
    assert retry.in_a_row == 0


class Panels:
    """The dispatcher's courier: what each panel would have been sent."""

    def __init__(self) -> None:
        self.launched: list[tuple[str, LaunchOrder]] = []
        self.ended: list[tuple[str, str]] = []

    def encode(self, order: LaunchOrder) -> bytes:
        return repr(sorted(asdict(order).items())).encode()

    def launch(self, device_id: str, order: LaunchOrder) -> None:
        self.launched.append((device_id, order))

    def end(self, device_id: str, lesson_id: str, now: float) -> None:
        self.ended.append((device_id, lesson_id))


def test_the_dispatcher_launches_a_lesson_once_the_store_answers_again(
    store: Stores,
) -> None:
    now = time.time()
    for panel in ("p1", "p2"):
        store.devices.device_connected(
            DeviceIdentity(panel, DeviceKind.PANEL, "s1", "r1"), 1, 90, now
        )
    lesson = Lesson("s1", "r1", now + 30, now + 2700, "7B", "maths", "T", "https://x/l", False)
    store.lessons.save_lessons([lesson], now)
    failing = FailingFirst(store.lessons, {"due_lessons": 2})
    registry = CollectorRegistry()
    panels = Panels()

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            dispatcher = Dispatcher(
                cast(LessonStore, failing),
                executor,
                panels,
                LoopFailures(registry),
                lead=60,
                settle=30,
                on_time=60,
            )
            task = asyncio.create_task(dispatcher.run())
            try:
                await until(
                    lambda: len(panels.launched) == 2, 10, "the panels were not sent the lesson"
                )
                # A launch by hand waits for the dispatcher's own next pass, not a second
                # dispatcher beside it.
                passes = failing.calls["due_lessons"]
                await asyncio.wait_for(dispatcher.pass_now(), 5)
                assert failing.calls["due_lessons"] == passes + 1
            finally:
                task.cancel()

    asyncio.run(scenario())
    assert failures(registry, "lesson_dispatcher") == 2
    assert sorted(d for d, _ in panels.launched) == ["p1", "p2"]
    order = dict(panels.launched)["p1"]
    assert order.command_id == f"launch:{lesson.lesson_id}:p1" and order.url == "https://x/l"
    # What the outbox keeps for a panel not connected is the courier's encoding.
    assert store.lessons.pending_commands("p1", time.time()) == [panels.encode(order)]


class RecordingWorker:
    """Stands in for the wave worker: every host ok, and what it was asked, recorded."""

    def __init__(self, asked: list[tuple[str, ...]]) -> None:
        self.asked = asked

    def run(self, job: WaveJob, cancel: threading.Event, log_path: Path) -> WaveRun:
        self.asked.append(tuple(job.hosts))
        results = {h: HostResult(h, "s1", job.wave, HostOutcome.OK) for h in job.hosts}
        return WaveRun("successful", 0, results, 0.01, log_path.parent)

    def close(self, grace: float = 0.0) -> None:
        pass


def test_a_rollout_goes_on_after_the_store_refuses_a_slice_s_results_and_a_wave_s_end(
    store: Stores, tmp_path: Path
) -> None:
    now = time.time()
    hosts = ["d1", "d2", "d3"]
    for n, device in enumerate(hosts, 1):
        identity = DeviceIdentity(device, DeviceKind.LAPTOP, "s1", "r1", address=f"198.18.0.{n}")
        store.devices.device_connected(identity, n, 90, now)
    failing = FailingFirst(store.rollouts, {"finish_wave": 1})
    slices = FailingFirst(store.slices, {"finish_slice": 2})
    registry = CollectorRegistry()
    asked: list[tuple[str, ...]] = []

    async def scenario() -> int:
        with ThreadPoolExecutor(2) as executor:
            engine = RolloutEngine(
                cast(RolloutStore, failing),
                cast(SliceStore, slices),
                store.devices.devices_by_id,
                executor,
                RunnerSettings(
                    remote_user="it",
                    known_hosts=tmp_path / "known_hosts",
                    control_path_dir=tmp_path / "cp",
                ),
                EngineSettings(
                    playbooks_dir=tmp_path,
                    work_dir=tmp_path / "rollouts",
                    ansible_dir=tmp_path / "ansible",
                    zone=ZoneInfo("UTC"),
                    batch_estimate=1.0,
                    recheck=1.0,
                    gate_days=7,
                    lesson_on_time=60,
                    claim_ttl=1.0,
                    claim_renew=0.2,
                ),
                RolloutMetrics(registry),
                LoopFailures(registry),
                new_worker=lambda _os_user: RecordingWorker(asked),
            )
            serving = asyncio.create_task(engine.serve())
            rid = await engine.start(
                RolloutSpec("agent.yml", "school=s1", wave_size=Amount(10, False)),
                [NewHost(h, "s1") for h in hosts],
                "test",
            )
            try:
                await until(
                    lambda: cast(Any, store.rollouts.get_rollout(rid)).state.final,
                    30,
                    "rollout not done",
                )
            finally:
                await engine.close()
                await serving
            return rid

    rid = asyncio.run(scenario())
    record = store.rollouts.get_rollout(rid)
    assert record is not None
    assert record.state is RolloutState.DONE, record.reason
    assert failures(registry, "rollout_engine") == 1
    assert failures(registry, "rollout_slices") == 2
    # The canary's results were refused twice: its slice ran again once its claim
    # expired, as after a controller's death; then the other two hosts in one wave.
    assert asked == [("d1",), ("d1",), ("d1",), ("d2", "d3")]
    outcomes = {h.device_id: h.outcome for h in store.rollouts.rollout_hosts(rid, None)}
    assert outcomes == dict.fromkeys(hosts, HostOutcome.OK)
    assert [w.wave for w in record.waves] == [1, 2]


def test_the_probe_schedule_reads_its_targets_and_stores_results_after_failures(
    store: Stores,
) -> None:
    store.infra.save_inventory(
        [School("s1")],
        [Room("s1", "r1")],
        [AccessPoint("ap-1", "s1", "198.18.0.11"), AccessPoint("ap-2", "s1", "198.18.0.12")],
        [Server("srv-1", "s1", "198.18.0.2")],
        time.time(),
    )
    failing = FailingFirst(store.infra, {"probe_targets": 2, "record_probes": 1})
    registry = CollectorRegistry()

    def check(target: ProbeTarget) -> Checked:
        # No address here answers: what is under test is the loop, not the probe.
        return Checked(ProbeResult(target.kind, target.target_id, True, "", 0.001, time.time()), 0)

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            prober = Prober(
                failing.probe_targets,
                failing.record_probes,
                ProbeSettings(interval=1.0, concurrency=2),
                executor,
                registry,
                check=check,
                flush_interval=0.1,
                failures=LoopFailures(registry),
            )
            task = asyncio.create_task(prober.run())
            try:
                await until(
                    lambda: (
                        all(
                            t.latest is not None for t in store.infra.list_access_points(None, None)
                        )
                        and cast(Any, store.infra.get_server("srv-1")).latest is not None
                    ),
                    15,
                    "probe results not stored",
                )
            finally:
                await prober.close()
                await task

    asyncio.run(scenario())
    assert failures(registry, "probes") == 3
    assert failing.calls["record_probes"] >= 2


def test_the_uplink_schedule_checks_a_school_after_the_store_failed(store: Stores) -> None:
    online(store, "p1", "s1", DeviceKind.PANEL)
    failing = FailingFirst(store.devices, {"fleet_counts": 2})
    courier = Courier({"p1"})
    counted = CollectorRegistry()

    async def scenario(checks: UplinkChecks) -> None:
        task = asyncio.create_task(checks.run())
        try:
            await until(
                lambda: bool(store.uplink.latest_uplink_checks(measured=True)), 20, "no check"
            )
        finally:
            task.cancel()

    run_uplink(
        store,
        courier,
        scenario,
        interval=1.0,
        failures=LoopFailures(counted),
        devices=cast(DeviceStore, failing),
    )
    assert failures(counted, "uplink_checks") == 2
    assert [o.command_id.split("-")[1] for _, o in courier.sent] == ["s1"]
