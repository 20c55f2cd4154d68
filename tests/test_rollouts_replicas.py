"""Rollouts among controllers sharing a store: only the controller holding the
rollouts lease runs waves; a start, pause, resume or abort reaching another takes
effect there through the bus; when the holder dies mid-wave another takes over
within the lease's bound and finishes the rollout, only the interrupted wave's hosts
running twice (and logged as such); a rollout ends once, whoever ends it.

In one process: each "controller" is a real engine with its own pool of connections
to one throwaway PostgreSQL database, its own LISTEN/NOTIFY bus and its own lease
keeper; only the wave worker is a stand-in that records which controller ran which
hosts (the real worker and Ansible are tests/test_wave_worker.py's and
tests/test_e2e_rollouts.py's)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from controller.leases.keeper import LeaseKeeper, LeaseMetrics, LeaseTiming
from controller.relay.bus import LocalBus
from controller.relay.pg_bus import PgBus
from controller.rollouts.across import Do, Message, encode, parse
from controller.rollouts.engine import EngineSettings, RolloutEngine
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.runner import RunnerSettings, WaveJob, WaveRun
from controller.rollouts.slice_runner import LOOK_EVERY
from controller.rollouts.slices import Renewal
from controller.rollouts.store import NewHost
from controller.store.pg_database import PgDatabase
from controller.stores import Stores, open_stores, sqlite_stores
from inventory.model import DeviceIdentity, DeviceKind
from inventory.rollouts import (
    Amount,
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
)

TIMING = LeaseTiming(ttl=1.5, renew_every=0.2, margin=0.3)
HOSTS = ["d1", "d2", "d3", "d4", "d5"]
# Waves of 1 (the canary), 2 and 2 hosts.
SPEC = RolloutSpec("agent.yml", "school=s1", wave_size=Amount(2, False))
DONE_5 = "every host done in 3 wave(s): 5 ok"


# -- the messages -------------------------------------------------------------------


@given(
    st.sampled_from(list(Do)),
    st.integers(1, 2**63 - 1),
    st.text(max_size=200).filter(lambda t: "\x00" not in t),
    st.text("0123456789abcdef", min_size=1, max_size=32),
)
def test_a_message_reads_back_as_written(do: Do, rollout_id: int, by: str, nonce: str) -> None:
    message = Message(do, rollout_id, by, nonce)
    assert parse(encode(message)) == message


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "null",
        "[1]",
        "{",
        '{"do":"abort","rollout":1,"by":"x"}',  # a key missing
        '{"do":"abort","rollout":1,"by":"x","n":"ab","more":1}',  # one too many
        '{"do":"explode","rollout":1,"by":"","n":"ab"}',
        '{"do":"abort","rollout":"1","by":"","n":"ab"}',
        '{"do":"abort","rollout":true,"by":"","n":"ab"}',
        '{"do":"abort","rollout":1.0,"by":"","n":"ab"}',
        '{"do":"abort","rollout":-1,"by":"","n":"ab"}',
        '{"do":"abort","rollout":9223372036854775808,"by":"","n":"ab"}',
        '{"do":"abort","rollout":1,"by":"","n":""}',  # an abort nobody could answer
        '{"do":"abort","rollout":1,"by":"","n":"AB"}',
        '{"do":"abort","rollout":1,"by":"","n":"ab; DROP"}',
        '{"do":"abort","rollout":1,"by":null,"n":"ab"}',
        '{"do":"abort","rollout":1,"by":"a\\u0000b","n":"ab"}',
        '{"do":"abort","rollout":0,"by":"","n":"ab"}',  # every rollout is only for wake
        '{"do":"look","rollout":0,"by":"","n":""}',
        '{"do":"abort","rollout":1,"by":"' + "x" * 201 + '","n":"ab"}',
        "[" * 100_000,
    ],
)
def test_a_message_not_written_by_a_controller_is_ignored(payload: str) -> None:
    assert parse(payload) is None


def test_wake_may_name_every_rollout() -> None:
    assert parse('{"do":"wake","rollout":0,"by":"","n":""}') == Message(Do.WAKE, 0)


# -- the store's part ---------------------------------------------------------------


def test_a_rollout_ends_once_and_the_unfinished_are_listed(both_stores: Stores) -> None:
    store = both_stores.rollouts
    ids = [
        store.create_rollout(SPEC, [NewHost(h, "s1")], "it", 1.0, LessonRates(0, 0))
        for h in ("a", "b", "c")
    ]
    store.set_rollout_state(ids[1], RolloutState.PAUSED, "paused", 2.0)
    assert store.end_rollout(ids[2], RolloutState.ABORTED, "aborted by it", 3.0) is True
    assert store.end_rollout(ids[2], RolloutState.DONE, "late", 4.0) is False
    assert store.end_rollout(999, RolloutState.DONE, "none", 4.0) is False
    with pytest.raises(ValueError, match=r"^paused is not a final state$"):
        store.end_rollout(ids[0], RolloutState.PAUSED, "", 4.0)
    assert store.unfinished_rollouts() == {
        ids[0]: RolloutState.RUNNING,
        ids[1]: RolloutState.PAUSED,
    }
    ended = store.get_rollout(ids[2])
    assert ended is not None
    assert (ended.state, ended.reason, ended.finished_at) == (
        RolloutState.ABORTED,
        "aborted by it",
        3.0,
    )
    assert store.rollout_hosts(ids[2])[0].outcome is HostOutcome.CANCELLED


def test_of_controllers_ending_a_rollout_at_once_one_ends_it(pg_url: str) -> None:
    stores = [open_stores(pg_url) for _ in range(4)]
    try:
        rid = stores[0].rollouts.create_rollout(
            SPEC, [NewHost("a", "s1")], "it", 1.0, LessonRates(0, 0)
        )
        start = threading.Barrier(8)

        def end(n: int) -> bool:
            start.wait()
            state = RolloutState.ABORTED if n % 2 else RolloutState.DONE
            return stores[n % 4].rollouts.end_rollout(rid, state, f"by {n}", 2.0 + n)

        with ThreadPoolExecutor(8) as pool:
            ended = list(pool.map(end, range(8)))
        assert ended.count(True) == 1
        record = stores[0].rollouts.get_rollout(rid)
        assert record is not None
        winner = ended.index(True)
        assert (record.reason, record.finished_at) == (f"by {winner}", 2.0 + winner)
    finally:
        for s in stores:
            s.close()


# -- controllers --------------------------------------------------------------------


@dataclass
class Hands:
    """Every controller's stand-in wave workers: the waves each ran, and a wave a
    test holds (it runs until cancelled or let go)."""

    runs: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    cancelled: list[tuple[str, int]] = field(default_factory=list)
    hold: set[tuple[str, int]] = field(default_factory=set)
    # Hosts whose playbook fails.
    fail: set[str] = field(default_factory=set)
    let_go: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ran(self, controller: str | None = None) -> list[tuple[int, tuple[str, ...]]]:
        with self.lock:
            return [(w, h) for c, w, h in self.runs if controller in (None, c)]


class StandInWorker:
    """Every host ok, unless the wave is cancelled first: then every host interrupted
    (its playbook had begun), as the real worker reports a cancelled wave."""

    def __init__(self, controller: str, hands: Hands) -> None:
        self._controller = controller
        self._hands = hands

    def run(self, job: WaveJob, cancel: threading.Event, log_path: Path) -> WaveRun:
        hands = self._hands
        assert job.wave is not None
        with hands.lock:
            hands.runs.append((self._controller, job.wave, tuple(job.hosts)))
        while (self._controller, job.wave) in hands.hold and not hands.let_go.is_set():
            if cancel.wait(0.02):
                with hands.lock:
                    hands.cancelled.append((self._controller, job.wave))
                results = {
                    h: HostResult(h, "s1", job.wave, HostOutcome.INTERRUPTED, "", "cancelled")
                    for h in job.hosts
                }
                return WaveRun("canceled", None, results, 0.01, log_path.parent)
        results = {
            h: HostResult(h, "s1", job.wave, HostOutcome.OK)
            if h not in hands.fail
            else HostResult(h, "s1", job.wave, HostOutcome.FAILED, "a task", "it failed")
            for h in job.hosts
        }
        return WaveRun("successful", 0, results, 0.01, log_path.parent)

    def close(self, grace: float = 0.0) -> None:
        pass


@dataclass
class Replica:
    """One controller's rollout part: its store, engine, lease keeper and figures."""

    name: str
    stores: Stores
    engine: RolloutEngine
    keeper: LeaseKeeper
    registry: CollectorRegistry
    pool: ThreadPoolExecutor
    bus: PgBus | LocalBus
    keeping: asyncio.Task[None] | None = None
    serving: asyncio.Task[None] | None = None
    holding: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return self.keeper.lease is not None

    def finished(self, state: RolloutState) -> float:
        value = self.registry.get_sample_value(
            "schoolfleet_rollouts_finished_total", {"state": state.value}
        )
        return value or 0.0

    async def start(self) -> None:
        await self.bus.start()
        self.serving = asyncio.create_task(self.engine.serve())
        self.keeping = asyncio.create_task(self.keeper.run())

    def die(self) -> None:
        """kill -9: no renewal, no release; its slices stop with it (the worker
        process dies with the controller) and nothing more is stored: its database
        connections are gone first."""
        assert self.keeping is not None
        self.stores.close()
        self.keeping.cancel()
        for task in self.holding:
            task.cancel()
        assert self.serving is not None
        self.serving.cancel()

    async def close(self) -> None:
        if self.keeping is not None and not self.keeping.done():
            self.keeping.cancel()
        await self.engine.close()
        if self.serving is not None:
            await asyncio.wait([self.serving])
        await self.keeper.close()
        await self.bus.close()
        self.pool.shutdown()


def _engine_settings(
    tmp: Path, timing: LeaseTiming, slice_hosts: int
) -> tuple[RunnerSettings, EngineSettings]:
    runner = RunnerSettings(
        remote_user="it",
        known_hosts=tmp / "known_hosts",
        # ssh's socket paths are short; a worker's tmp_path may not be. Never created:
        # the stand-in workers open no ssh.
        control_path_dir=Path(tempfile.gettempdir()) / f"sfcp-{secrets.token_hex(4)}",
    )
    settings = EngineSettings(
        playbooks_dir=tmp,
        work_dir=tmp / "rollouts",
        ansible_dir=tmp / "ansible",
        zone=ZoneInfo("UTC"),
        batch_estimate=1.0,
        recheck=1.0,
        gate_days=7,
        lesson_on_time=60,
        slice_hosts=slice_hosts,
        slots=1,
        claim_ttl=timing.ttl,
        claim_renew=timing.renew_every,
    )
    return runner, settings


def replica(
    name: str,
    stores: Stores,
    hands: Hands,
    tmp: Path,
    timing: LeaseTiming = TIMING,
    slice_hosts: int = 1,
) -> Replica:
    """A controller's rollout part as controller/server.py assembles it."""
    pool = ThreadPoolExecutor(4)
    registry = CollectorRegistry()
    bus: PgBus | LocalBus
    if isinstance(stores.sql, PgDatabase):
        bus = PgBus(stores.sql, stores.sql.connect_alone)
    else:
        bus = LocalBus()
    runner, settings = _engine_settings(tmp / name, timing, slice_hosts)
    engine = RolloutEngine(
        stores.rollouts,
        stores.slices,
        stores.devices.devices_by_id,
        pool,
        runner,
        settings,
        RolloutMetrics(registry),
        None,
        holder=name,
        new_worker=lambda _os_user: StandInWorker(name, hands),
        bus=bus,
    )
    holding: list[asyncio.Task[Any]] = []

    async def work() -> None:
        holding.append(cast(asyncio.Task[Any], asyncio.current_task()))
        await engine.hold()

    keeper = LeaseKeeper(
        stores.leases, RolloutEngine.LEASE, name, work, pool, LeaseMetrics(None), timing
    )
    return Replica(name, stores, engine, keeper, registry, pool, bus, holding=holding)


def _devices(stores: Stores) -> None:
    now = time.time()
    for n, device in enumerate(HOSTS, 1):
        identity = DeviceIdentity(device, DeviceKind.LAPTOP, "s1", "r1", address=f"198.18.0.{n}")
        stores.devices.device_connected(identity, n, 90, now)


async def until(condition: Callable[[], object], limit: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, f"{what}: not within {limit} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def stored_until(
    stores: Stores, rid: int, condition: Callable[[RolloutRecord], bool], limit: float
) -> RolloutRecord:
    """The stored rollout once ``condition`` holds for it."""
    found: list[RolloutRecord] = []

    def check() -> bool:
        record = stores.rollouts.get_rollout(rid)
        found[:] = [record] if record is not None else []
        return bool(found) and condition(found[0])

    await until(check, limit, f"rollout {rid}")
    return found[0]


Scenario = Callable[[Replica, Replica, Hands], Awaitable[None]]
Run = Callable[..., None]


@pytest.fixture
def two_controllers(pg_url: str, tmp_path: Path) -> Iterator[Run]:
    """Runs a scenario with two controllers on one PostgreSQL database: the lease's
    holder and the other, once one holds it."""
    opened: list[Stores] = []

    def run(scenario: Scenario, timing: LeaseTiming = TIMING) -> None:
        hands = Hands()

        async def main() -> None:
            both = []
            for name in ("a", "b"):
                stores = open_stores(pg_url)
                opened.append(stores)
                both.append(replica(name, stores, hands, tmp_path, timing))
            _devices(opened[0])
            for r in both:
                await r.start()
            try:
                await until(lambda: any(r.holds for r in both), 5, "a holder")
                holder = next(r for r in both if r.holds)
                other = next(r for r in both if r is not holder)
                await scenario(holder, other, hands)
            finally:
                hands.let_go.set()
                for r in both:
                    await r.close()

        asyncio.run(main())

    try:
        yield run
    finally:
        for s in opened:
            s.close()


def _outcomes(stores: Stores, rid: int) -> dict[str, HostOutcome]:
    return {h.device_id: h.outcome for h in stores.rollouts.rollout_hosts(rid)}


def _slices_of(hands: Hands, wave: int) -> dict[tuple[str, ...], list[str]]:
    """Which controllers ran each slice of the wave (several: it ran again)."""
    found: dict[tuple[str, ...], list[str]] = {}
    with hands.lock:
        for controller, w, hosts in hands.runs:
            if w == wave:
                found.setdefault(hosts, []).append(controller)
    return found


async def _wave_2_on_both(
    holder: Replica, other: Replica, hands: Hands, spec: RolloutSpec = SPEC
) -> int:
    """A rollout started at the other controller, once each controller runs one of
    wave 2's two slices and holds it (one slot each: the second slice can only be the
    other controller's); its id."""
    hands.hold = {(holder.name, 2), (other.name, 2)}
    rid = await other.engine.start(spec, [NewHost(h, "s1") for h in HOSTS], "it")
    await until(lambda: len(_slices_of(hands, 2)) == 2, 10, "wave 2's two slices")
    return rid


def test_a_wave_s_slices_run_on_both_controllers_and_the_holder_drives(
    two_controllers: Run,
) -> None:
    async def scenario(holder: Replica, other: Replica, hands: Hands) -> None:
        rid = await _wave_2_on_both(holder, other, hands)
        ran = _slices_of(hands, 2)
        assert sorted(ran) == [("d2",), ("d3",)]
        assert sorted(c for controllers in ran.values() for c in controllers) == sorted(
            [holder.name, other.name]
        )
        hands.let_go.set()
        record = await stored_until(other.stores, rid, lambda r: r.state.final, 10)
        assert (record.state, record.reason) == (RolloutState.DONE, DONE_5)
        assert [(w.wave, w.hosts, w.failed) for w in record.waves] == [
            (1, 1, 0),
            (2, 2, 0),
            (3, 2, 0),
        ]
        # Every host ran once, wherever.
        assert sorted(h for _, hosts in hands.ran() for h in hosts) == HOSTS
        assert _outcomes(other.stores, rid) == dict.fromkeys(HOSTS, HostOutcome.OK)
        # The rollout ended once, by its driver.
        # Counted by the controller whose call ended it, once that call returns.
        await until(
            lambda: holder.finished(RolloutState.DONE) + other.finished(RolloutState.DONE) == 1,
            5,
            "the end counted",
        )
        assert (holder.finished(RolloutState.DONE), other.finished(RolloutState.DONE)) == (1, 0)
        stored = [
            r.registry.get_sample_value("schoolfleet_rollout_slices_total", {"result": "stored"})
            for r in (holder, other)
        ]
        assert sum(v or 0 for v in stored) == 5 and all(stored)

    two_controllers(scenario)


def test_the_failure_budget_is_exact_over_slices_run_on_both_controllers(
    two_controllers: Run,
) -> None:
    async def scenario(holder: Replica, other: Replica, hands: Hands) -> None:
        # Wave 2's two hosts fail, one on each controller; 20% of 5 hosts is one.
        hands.fail = {"d2", "d3"}
        spec = RolloutSpec("agent.yml", "school=s1", wave_size=Amount(2, False), max_fail=20.0)
        rid = await _wave_2_on_both(holder, other, hands, spec)
        assert len({c for cs in _slices_of(hands, 2).values() for c in cs}) == 2
        hands.let_go.set()
        record = await stored_until(other.stores, rid, lambda r: r.state.final, 10)
        assert record.state is RolloutState.HALTED
        assert record.reason == (
            "wave 2: 2 of 5 hosts failed or unreachable, over the --max-fail budget of 1 (20%)"
        )
        assert [(w.wave, w.hosts, w.failed) for w in record.waves] == [(1, 1, 0), (2, 2, 2)]
        assert record.counts[HostOutcome.FAILED] == 2
        assert record.counts[HostOutcome.CANCELLED] == 2
        assert [w for w, _ in hands.ran()].count(3) == 0, "no wave after the halt"

    two_controllers(scenario)


def test_an_abort_at_the_other_controller_stops_every_slice_at_once(
    two_controllers: Run,
) -> None:
    async def scenario(holder: Replica, other: Replica, hands: Hands) -> None:
        rid = await _wave_2_on_both(holder, other, hands)
        started = time.monotonic()
        record = await other.engine.abort(rid, "alice")
        took = time.monotonic() - started
        assert record is not None
        assert (record.state, record.reason) == (RolloutState.ABORTED, "aborted by alice")
        assert took < 2.0, took
        assert sorted(hands.cancelled) == sorted([(holder.name, 2), (other.name, 2)])
        # Stored by each slice's runner as its run stopped: the abort answered after.
        assert _outcomes(other.stores, rid) == {
            "d1": HostOutcome.OK,
            "d2": HostOutcome.INTERRUPTED,
            "d3": HostOutcome.INTERRUPTED,
            "d4": HostOutcome.CANCELLED,
            "d5": HostOutcome.CANCELLED,
        }
        runs = len(hands.ran())
        await asyncio.sleep(1.0)
        assert len(hands.ran()) == runs == 3, "no slice after the abort"
        assert holder.finished(RolloutState.ABORTED) + other.finished(RolloutState.ABORTED) == 1
        assert holder.finished(RolloutState.ABORTED) == 1
        # A second abort, anywhere, changes nothing.
        again = await holder.engine.abort(rid, "bob")
        assert again is not None and again.reason == "aborted by alice"

    two_controllers(scenario)


def test_pause_and_resume_at_the_other_controller(
    two_controllers: Run,
) -> None:
    async def scenario(holder: Replica, other: Replica, hands: Hands) -> None:
        hands.hold = {(holder.name, 1), (other.name, 1)}
        rid = await other.engine.start(SPEC, [NewHost(h, "s1") for h in HOSTS], "it")
        await until(lambda: len(hands.ran()) == 1, 10, "the canary running")
        paused = await other.engine.pause(rid)
        assert paused is not None and paused.state is RolloutState.PAUSED
        hands.let_go.set()  # the running wave finishes; no other starts
        record = await stored_until(
            other.stores, rid, lambda r: all(w.finished_at for w in r.waves), 5
        )
        await asyncio.sleep(1.5)
        record = other.stores.rollouts.get_rollout(rid)  # type: ignore[assignment]
        assert (record.state, len(record.waves)) == (RolloutState.PAUSED, 1)
        assert record.counts[HostOutcome.PENDING] == 4
        assert len(hands.ran()) == 1
        resumed = await other.engine.resume(rid)
        assert resumed is not None and resumed.state is RolloutState.RUNNING
        done = await stored_until(other.stores, rid, lambda r: r.state.final, 10)
        assert done.state is RolloutState.DONE
        assert sorted(h for _, hosts in hands.ran() for h in hosts) == HOSTS

    two_controllers(scenario)


def test_the_holder_dying_mid_wave_its_slice_runs_again_and_the_other_finishes(
    two_controllers: Run, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "controller.rollouts")

    async def scenario(holder: Replica, other: Replica, hands: Hands) -> None:
        rid = await _wave_2_on_both(holder, other, hands)
        (dead,) = [hosts for hosts, cs in _slices_of(hands, 2).items() if cs == [holder.name]]
        holder.die()
        died = time.monotonic()
        hands.hold.discard((other.name, 2))  # the other's own slice ends
        await until(
            lambda: _slices_of(hands, 2)[dead] == [holder.name, other.name],
            10,
            "the dead controller's slice run again by the other",
        )
        took = time.monotonic() - died
        # Claimed again once the dead claim expired, at the runner's next look.
        assert took <= TIMING.ttl + LOOK_EVERY + 0.5, took
        record = await stored_until(other.stores, rid, lambda r: r.state.final, 10)
        assert (record.state, record.reason) == (RolloutState.DONE, DONE_5)
        assert [(w.wave, w.hosts, w.failed) for w in record.waves] == [
            (1, 1, 0),
            (2, 2, 0),
            (3, 2, 0),
        ]
        assert _outcomes(other.stores, rid) == dict.fromkeys(HOSTS, HostOutcome.OK)
        # Only the dead controller's slice ran twice.
        ran = sorted(h for _, hosts in hands.ran() for h in hosts)
        assert ran == sorted([*HOSTS, *dead])
        # Counted by the controller whose call ended it, once that call returns: the
        # store says done a moment before.
        await until(lambda: other.finished(RolloutState.DONE) == 1, 5, "the end counted")
        assert holder.finished(RolloutState.DONE) == 0

    two_controllers(scenario)
    again = [r.getMessage() for r in caplog.records if "previous claim" in r.getMessage()]
    assert len(again) == 1
    assert again[0].startswith("rollout 1 wave 2 slice ")
    assert again[0].endswith(
        ": its previous claim ended before the slice did (a controller stopped or died); "
        "the playbook runs on its 1 hosts again here"
    )
    assert any("rollout 1 resumed from the store" in r.getMessage() for r in caplog.records)


def test_a_controller_stopping_gives_its_slice_up_to_another_at_once(
    two_controllers: Run,
) -> None:
    async def scenario(holder: Replica, other: Replica, hands: Hands) -> None:
        rid = await _wave_2_on_both(holder, other, hands)
        (given,) = [hosts for hosts, cs in _slices_of(hands, 2).items() if cs == [other.name]]
        await other.close()  # a clean stop (SIGTERM): its run cut, its claim given up
        stopped = time.monotonic()
        assert (other.name, 2) in hands.cancelled
        assert (
            other.registry.get_sample_value("schoolfleet_rollout_slices_total", {"result": "lost"})
            == 1
        )
        hands.hold.discard((holder.name, 2))
        await until(
            lambda: _slices_of(hands, 2)[given] == [other.name, holder.name],
            10,
            "the given-up slice run by the holder",
        )
        # Well before the 6 s claim would have expired.
        assert time.monotonic() - stopped < 3.0
        record = await stored_until(holder.stores, rid, lambda r: r.state.final, 10)
        assert (record.state, record.reason) == (RolloutState.DONE, DONE_5)

    two_controllers(scenario, LeaseTiming(ttl=6.0, renew_every=0.5, margin=0.5))


def test_a_claim_lost_to_another_controller_stores_nothing(both_stores: Stores) -> None:
    store = both_stores
    rid = store.rollouts.create_rollout(
        SPEC, [NewHost(h, "s1") for h in HOSTS], "it", 1.0, LessonRates(0, 0)
    )
    store.rollouts.start_wave(rid, 1, ["d1", "d2"], 2.0, 1)
    first = store.slices.claim_slice("a", 0.2)
    second = store.slices.claim_slice("b", 60)
    assert first is not None and second is not None
    assert (first.slice, first.epoch, first.hosts) == (1, 1, (("d1", "s1"),))
    assert (second.slice, second.epoch, second.hosts) == (2, 1, (("d2", "s1"),))
    assert store.slices.claim_slice("c", 60) is None, "both claimed"
    time.sleep(0.4)
    # a stalled past its claim: c takes the slice, a's renewal and results are refused.
    third = store.slices.claim_slice("c", 60)
    assert third is not None and (third.slice, third.epoch) == (1, 2)
    assert store.slices.renew_slice(first, 60) is Renewal.LOST
    ok = [HostResult("d1", "s1", 1, HostOutcome.OK)]
    failed = [HostResult("d1", "s1", 1, HostOutcome.FAILED, "t", "stale")]
    assert store.slices.finish_slice(first, failed, 3.0) is False
    assert store.slices.unfinished_slices(rid, 1) == 2
    assert store.slices.finish_slice(third, ok, 4.0) is True
    assert store.slices.finish_slice(third, failed, 5.0) is False, "a slice is finished once"
    assert _outcomes(store, rid)["d1"] is HostOutcome.OK
    assert store.slices.unfinished_slices(rid, 1) == 1
    # An abort: the live claim learns the rollout ended and still stores what it did.
    assert store.rollouts.end_rollout(rid, RolloutState.ABORTED, "aborted by it", 6.0)
    assert store.slices.renew_slice(second, 60) is Renewal.ENDED
    assert store.slices.running_slices(rid) == 1
    assert store.slices.finish_slice(second, [HostResult("d2", "s1", 1, HostOutcome.OK)], 7.0)
    assert store.slices.running_slices(rid) == 0
    assert _outcomes(store, rid) == {
        "d1": HostOutcome.OK,
        "d2": HostOutcome.OK,
        **dict.fromkeys(HOSTS[2:], HostOutcome.CANCELLED),
    }
    record = store.rollouts.get_rollout(rid)
    assert record is not None and [(w.hosts, w.failed) for w in record.waves] == [(2, 0)]


def test_a_slice_nobody_claimed_is_cancelled_by_an_abort(both_stores: Stores) -> None:
    store = both_stores
    rid = store.rollouts.create_rollout(
        SPEC, [NewHost(h, "s1") for h in HOSTS], "it", 1.0, LessonRates(0, 0)
    )
    store.rollouts.start_wave(rid, 1, ["d1", "d2", "d3"], 2.0, 2)
    claim = store.slices.claim_slice("a", 60)
    assert claim is not None and claim.hosts == (("d1", "s1"), ("d2", "s1"))
    assert store.rollouts.end_rollout(rid, RolloutState.ABORTED, "aborted by it", 3.0)
    assert store.slices.claim_slice("b", 60) is None, "an ended rollout's slice"
    assert _outcomes(store, rid) == {
        "d1": HostOutcome.INTERRUPTED,
        "d2": HostOutcome.INTERRUPTED,
        "d3": HostOutcome.CANCELLED,
        "d4": HostOutcome.CANCELLED,
        "d5": HostOutcome.CANCELLED,
    }
    assert store.slices.unfinished_slices(rid, 1) == 1
    assert store.slices.running_slices(rid) == 1


def test_controllers_claiming_at_once_each_get_another_slice(pg_url: str) -> None:
    stores = [open_stores(pg_url) for _ in range(4)]
    try:
        hosts = [f"h{n:02}" for n in range(16)]
        rid = stores[0].rollouts.create_rollout(
            SPEC, [NewHost(h, "s1") for h in hosts], "it", 1.0, LessonRates(0, 0)
        )
        stores[0].rollouts.start_wave(rid, 1, hosts, 2.0, 1)
        start = threading.Barrier(8)

        def claim(n: int) -> list[int]:
            start.wait()
            got = []
            while (c := stores[n % 4].slices.claim_slice(f"c{n}", 60)) is not None:
                got.append(c.slice)
            return got

        with ThreadPoolExecutor(8) as pool:
            claimed = list(pool.map(claim, range(8)))
        every = sorted(n for got in claimed for n in got)
        assert every == list(range(1, 17)), "each slice claimed once"
    finally:
        for s in stores:
            s.close()


def test_an_abort_while_no_controller_holds_the_lease_ends_the_rollout_once(
    two_controllers: Run,
) -> None:
    async def scenario(holder: Replica, other: Replica, hands: Hands) -> None:
        hands.hold = {(holder.name, 1), (other.name, 1)}
        rid = await other.engine.start(SPEC, [NewHost(h, "s1") for h in HOSTS], "it")
        await until(lambda: len(hands.ran()) == 1, 10, "the canary running")
        holder.die()
        started = time.monotonic()
        record = await other.engine.abort(rid, "alice")
        took = time.monotonic() - started
        assert record is not None
        assert (record.state, record.reason) == (RolloutState.ABORTED, "aborted by alice")
        # Nobody took it: the asker waited for a driver, then ended it in the store.
        assert 2.9 < took < 4.0, took
        await until(lambda: other.holds, 10, "the other holding the lease")
        await asyncio.sleep(1.0)
        assert _outcomes(other.stores, rid) == {
            "d1": HostOutcome.INTERRUPTED,
            **dict.fromkeys(HOSTS[1:], HostOutcome.CANCELLED),
        }
        assert len(hands.ran()) == 1, "an aborted rollout is not driven again"
        assert other.finished(RolloutState.ABORTED) == 1
        assert holder.finished(RolloutState.ABORTED) == 0
        after = other.stores.rollouts.get_rollout(rid)
        assert after is not None and after.reason == "aborted by alice"

    # A lease longer than an abort's wait for a driver.
    two_controllers(scenario, LeaseTiming(ttl=6.0, renew_every=0.5, margin=0.5))


def test_an_abort_asked_as_the_lease_changes_hands_reaches_the_new_holder(
    two_controllers: Run,
) -> None:
    async def scenario(holder: Replica, other: Replica, hands: Hands) -> None:
        hands.hold = {(holder.name, 1), (other.name, 1)}
        rid = await other.engine.start(SPEC, [NewHost(h, "s1") for h in HOSTS], "it")
        await until(lambda: len(hands.ran()) == 1, 10, "the canary running")
        holder.die()
        record = await other.engine.abort(rid, "alice")
        assert record is not None
        assert (record.state, record.reason) == (RolloutState.ABORTED, "aborted by alice")
        # The new holder took the lease within the abort's wait, found the canary's
        # wave running and heard the abort asked again: it ended the rollout.
        assert other.holds
        assert _outcomes(other.stores, rid) == {
            "d1": HostOutcome.INTERRUPTED,
            **dict.fromkeys(HOSTS[1:], HostOutcome.CANCELLED),
        }
        assert len(hands.ran()) == 1
        # Counted by its driver once the ending call returns, maybe after the asker saw
        # the store say aborted.
        await until(lambda: other.finished(RolloutState.ABORTED) == 1, 5, "the end counted")
        assert holder.finished(RolloutState.ABORTED) == 0

    two_controllers(scenario)


def test_alone_on_sqlite_the_lease_is_taken_at_once(tmp_path: Path) -> None:
    stores = sqlite_stores(tmp_path / "c.db")
    hands = Hands()
    _devices(stores)

    async def main() -> RolloutRecord:
        alone = replica("alone", stores, hands, tmp_path, slice_hosts=20)
        # Started before the keeper took the lease: the first read of the store has it.
        rid = await alone.engine.start(SPEC, [NewHost(h, "s1") for h in HOSTS], "it")
        await alone.start()
        try:
            took = await until(lambda: alone.holds, 1, "the lease")
            assert took < 0.5
            return await stored_until(stores, rid, lambda r: r.state.final, 10)
        finally:
            await alone.close()

    try:
        record = asyncio.run(main())
    finally:
        stores.close()
    assert record.state is RolloutState.DONE
    assert hands.ran("alone") == [(1, ("d1",)), (2, ("d2", "d3")), (3, ("d4", "d5"))]


def test_alone_on_sqlite_a_restart_runs_the_interrupted_slice_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "controller.rollouts")
    stores = sqlite_stores(tmp_path / "c.db")
    hands = Hands()
    _devices(stores)
    # As a controller left it when it stopped in the middle of the second wave.
    rid = stores.rollouts.create_rollout(
        SPEC, [NewHost(h, "s1") for h in HOSTS], "it", time.time(), LessonRates(0, 0)
    )
    stores.rollouts.start_wave(rid, 1, ["d1"], time.time())
    stores.rollouts.finish_wave(rid, 1, [HostResult("d1", "s1", 1, HostOutcome.OK)], time.time())
    stores.rollouts.start_wave(rid, 2, ["d2", "d3"], time.time())
    assert stores.slices.claim_slice("before", 600) is not None
    # What the controller does at start-up, alone on its store.
    assert stores.slices.forget_slice_claims() == 1

    async def main() -> RolloutRecord:
        alone = replica("alone", stores, hands, tmp_path, slice_hosts=20)
        await alone.start()
        try:
            return await stored_until(stores, rid, lambda r: r.state.final, 10)
        finally:
            await alone.close()

    try:
        record = asyncio.run(main())
    finally:
        stores.close()
    assert (record.state, record.reason) == (RolloutState.DONE, DONE_5)
    assert hands.ran() == [(2, ("d2", "d3")), (3, ("d4", "d5"))]
    logged = [r.getMessage() for r in caplog.records]
    assert (
        f"rollout {rid} wave 2 slice 1: its previous claim ended before the slice did (a "
        "controller stopped or died); the playbook runs on its 2 hosts again here"
    ) in logged
    assert f"rollout {rid} resumed from the store" in logged


def test_messages_on_the_bus_are_json_of_four_fields() -> None:
    # What a controller of another version, or an operator's NOTIFY, must write.
    assert json.loads(encode(Message(Do.ABORT, 7, "alice", "ab12"))) == {
        "do": "abort",
        "rollout": 7,
        "by": "alice",
        "n": "ab12",
    }
