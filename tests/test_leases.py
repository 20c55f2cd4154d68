"""Leases on work that must run once among the controllers sharing a store: taken,
renewed and lost by the database's clock, one holder at a time even when several
ask at once, taken over within a bound when the holder dies, and a holder that
stalls stops its work before another can take the lease."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from controller.errors import StoreError
from controller.leases.keeper import LeaseKeeper, LeaseMetrics, LeaseTiming
from controller.leases.sql_store import SqlLeases
from controller.leases.store import Lease, LeaseStore
from controller.stores import Stores, open_stores


@pytest.fixture
def leases(both_stores: Stores) -> SqlLeases:
    return SqlLeases(both_stores.sql)


def test_taken_renewed_refused_and_taken_over_after_it_expires(leases: SqlLeases) -> None:
    first = leases.take("dispatch", "a", 0.4)
    assert first is not None and (first.name, first.holder, first.epoch) == ("dispatch", "a", 1)
    assert leases.take("dispatch", "b", 10) is None, "another's live lease is not taken"
    renewed = leases.take("dispatch", "a", 0.4)
    assert renewed is not None and renewed.epoch == 1 and renewed.expires_at >= first.expires_at
    assert leases.take("probes", "b", 10) == Lease(
        "probes",
        "b",
        1,
        leases.current("probes").expires_at,  # type: ignore[union-attr]
    ), "each kind of work has its own lease"
    time.sleep(0.5)
    taken = leases.take("dispatch", "b", 10)
    assert taken is not None and (taken.holder, taken.epoch) == ("b", 2)
    assert leases.take("dispatch", "a", 10) is None, "the old holder does not get it back"
    assert leases.release(first) is False, "a lost lease cannot be given up"
    assert leases.current("dispatch") == taken
    assert leases.release(taken) is True
    again = leases.take("dispatch", "c", 10)
    assert again is not None and (again.holder, again.epoch) == ("c", 3), "free at once"
    assert leases.current("nothing") is None


def test_a_crashed_holders_leases_are_forgotten_at_once(leases: SqlLeases) -> None:
    crashed = leases.take("dispatch", "old-pid", 60)
    assert crashed is not None and leases.take("probes", "old-pid", 60) is not None
    assert leases.take("dispatch", "new-pid", 60) is None
    assert leases.forget_holders() == 2
    assert leases.forget_holders() == 0
    taken = leases.take("dispatch", "new-pid", 60)
    assert taken is not None and taken.epoch == crashed.epoch + 1, "epochs go on"


def test_hostile_names_are_data(leases: SqlLeases) -> None:
    name = "x'); DELETE FROM leases; --"
    held = leases.take(name, "a\N{SNOWMAN}", 10)
    assert held is not None and leases.current(name) == held
    assert leases.take("other", "b", 10) is not None
    assert leases.current(name) == held


def test_many_controllers_asking_at_once_get_one_holder(pg_url: str) -> None:
    stores = [open_stores(pg_url) for _ in range(4)]
    try:
        start = threading.Barrier(16)
        won: list[Lease] = []

        def ask(n: int) -> None:
            store = SqlLeases(stores[n % 4].sql)
            start.wait()
            lease = store.take("dispatch", f"replica-{n}", 10)
            if lease is not None:
                won.append(lease)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(ask, range(16)))
        assert len(won) == 1 and won[0].epoch == 1
        assert SqlLeases(stores[0].sql).current("dispatch") == won[0]
    finally:
        for s in stores:
            s.close()


class _Stallable:
    """The real store, with a switch that makes its calls hang (a stalled process or
    a lost network path to the database)."""

    def __init__(self, store: SqlLeases) -> None:
        self._store = store
        self.flowing = threading.Event()
        self.flowing.set()

    def take(self, name: str, holder: str, ttl: float) -> Lease | None:
        if not self.flowing.wait(30):
            raise StoreError("stalled too long")
        return self._store.take(name, holder, ttl)

    def release(self, lease: Lease) -> bool:
        return self._store.release(lease)

    def forget_holders(self) -> int:
        return self._store.forget_holders()

    def current(self, name: str) -> Lease | None:
        return self._store.current(name)


class _Log:
    """Which holder's work ran when (monotonic seconds)."""

    def __init__(self) -> None:
        self.spans: dict[str, list[list[float]]] = {}

    def work(self, holder: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            span = [time.monotonic(), float("inf")]
            self.spans.setdefault(holder, []).append(span)
            try:
                await asyncio.Event().wait()
            finally:
                span[1] = time.monotonic()

        return run

    def running(self) -> list[str]:
        return [h for h, spans in self.spans.items() if spans and spans[-1][1] == float("inf")]


TIMING = LeaseTiming(ttl=1.5, renew_every=0.2, margin=0.3)


def _keeper(store: LeaseStore, holder: str, log: _Log, pool: ThreadPoolExecutor) -> LeaseKeeper:
    return LeaseKeeper(
        store, "dispatch", holder, log.work(holder), pool, LeaseMetrics(None), TIMING
    )


@pytest.fixture
def two_stores(pg_url: str) -> Iterator[tuple[Stores, Stores]]:
    a, b = open_stores(pg_url), open_stores(pg_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


async def _until(condition, limit: float) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "not within the bound"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_a_dead_holders_work_is_taken_over_within_the_bound(
    two_stores: tuple[Stores, Stores],
) -> None:
    log = _Log()

    registries = [CollectorRegistry(), CollectorRegistry()]

    def taken(n: int) -> float | None:
        return registries[n].get_sample_value(
            "schoolfleet_lease_taken_total", {"lease": "dispatch"}
        )

    def held(n: int) -> float | None:
        return registries[n].get_sample_value("schoolfleet_lease_held", {"lease": "dispatch"})

    async def main() -> float:
        pool = ThreadPoolExecutor(4)
        keepers = [
            LeaseKeeper(SqlLeases(s.sql), "dispatch", h, log.work(h), pool, LeaseMetrics(r), TIMING)
            for s, h, r in zip(two_stores, ("a", "b"), registries, strict=True)
        ]
        tasks = [asyncio.create_task(k.run()) for k in keepers]
        await _until(lambda: len(log.running()) == 1, 5)
        await asyncio.sleep(1.0)
        assert len(log.running()) == 1, "one holder at a time"
        (holder,) = log.running()
        dead = ("a", "b").index(holder)
        # What each controller exports: taken once by the holder, renewals not counted.
        assert [taken(dead), taken(1 - dead)] == [1.0, 0.0]
        assert [held(dead), held(1 - dead)] == [1.0, 0.0]
        # kill -9: the keeper stops and its work with it, and nothing gives the lease up.
        tasks[dead].cancel()
        for span in log.spans[holder]:
            span[1] = min(span[1], time.monotonic())
        took = await _until(lambda: log.running() == [("a", "b")[1 - dead]], 5)
        assert [taken(dead), taken(1 - dead)] == [1.0, 1.0]
        assert held(1 - dead) == 1.0
        tasks[1 - dead].cancel()
        await keepers[1 - dead].close()
        pool.shutdown()
        return took

    took = asyncio.run(main())
    # Taken within the lease's length plus one renewal period.
    assert took <= TIMING.ttl + TIMING.renew_every + 0.3


def test_a_stalled_holder_stops_before_another_starts_and_stays_out(
    two_stores: tuple[Stores, Stores],
) -> None:
    log = _Log()
    a_store = _Stallable(SqlLeases(two_stores[0].sql))

    async def main() -> None:
        pool = ThreadPoolExecutor(4)
        a = _keeper(a_store, "a", log, pool)
        a_task = asyncio.create_task(a.run())
        await _until(lambda: log.running() == ["a"], 5)
        b = LeaseKeeper(
            SqlLeases(two_stores[1].sql),
            "dispatch",
            "b",
            log.work("b"),
            pool,
            LeaseMetrics(None),
            TIMING,
        )
        b_task = asyncio.create_task(b.run())
        await asyncio.sleep(0.5)
        assert log.running() == ["a"]
        a_store.flowing.clear()  # a stalls: its renewals hang
        await _until(lambda: "b" in log.running(), 5)
        a_stopped = log.spans["a"][-1][1]
        b_started = log.spans["b"][-1][0]
        assert a_stopped < b_started, "a's work ended before b's began"
        a_store.flowing.set()  # a comes back
        await asyncio.sleep(1.0)
        assert log.running() == ["b"], "the stale holder does not act again"
        assert len(log.spans["a"]) == 1
        assert a.lease is None and b.lease is not None and b.lease.epoch == 2
        for task in (a_task, b_task):
            task.cancel()
        await a.close()
        await b.close()
        pool.shutdown()

    asyncio.run(main())
