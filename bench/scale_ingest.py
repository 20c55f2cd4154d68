"""One measured ingest run of the scale-out benchmark: a setup (one SQLite controller, or
1-3 replicas on one PostgreSQL database), its simulated devices, one window.

The devices are spread over the replicas by the generators themselves: each generator
process (bench/loadgen.py) connects its devices to one replica's address, the
processes handed to the replicas in turn. No load balancer sits between: on this
2-core machine HAProxy would take CPU from the processes measured, and the figure
wanted is what a replica and the database cost per heartbeat (a city's balancer runs
on machines of its own). The reconnect storm (bench/scale_storm.py) goes through
HAProxy, since what it measures is the balancer's and the agents' failover.

The sequence is bench/run.py's: start the replicas (a fresh database copied from the
migrated template, or a fresh SQLite file), open every device's stream, start the
heartbeats, settle for ``warmup`` seconds, then read every replica's counters and CPU,
PostgreSQL's CPU and the generators' at the start and end of a ``seconds`` window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.observe import Scrape, cpu_seconds, machine_busy_seconds, rss_kib, scrape
from bench.procs import (
    CONTROLLER,
    Generator,
    Record,
    Target,
    merged_errors,
    start_generators,
    stop_process,
)
from bench.run import Load, kept_up, split
from bench.scale_pg import BenchPg, WalActivity
from bench.scale_procs import start_replica

log = logging.getLogger("bench")

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


@dataclass(frozen=True, slots=True)
class Setup:
    """Which store and how many controllers on it."""

    store: str
    replicas: int

    @property
    def name(self) -> str:
        if self.store == SQLITE:
            return "SQLite, 1 controller"
        return f"PostgreSQL, {self.replicas} replica{'s' if self.replicas > 1 else ''}"


SETUPS = (Setup(SQLITE, 1), Setup(POSTGRESQL, 1), Setup(POSTGRESQL, 2), Setup(POSTGRESQL, 3))


def assign(devices: int, procs: int, replicas: int) -> list[tuple[int, int, int]]:
    """(replica, first device, count) for each generator process: the devices split as
    evenly as can be, the processes handed to the replicas in turn."""
    return [(n % replicas, first, count) for n, (first, count) in enumerate(split(devices, procs))]


@dataclass(frozen=True, slots=True)
class ScaleResult:
    """The figures of one run of one setup; CPU in cores (CPU-seconds per second)."""

    setup: str
    load: str
    replicas: int
    devices: int
    connected: int
    offered_per_s: float
    stored_per_s: float
    received_per_s: float
    # Per replica, in start order.
    stored_each: tuple[float, ...]
    streams_each: tuple[int, ...]
    rss_idle_kib: tuple[int, ...]
    rss_end_kib: tuple[int, ...]
    controllers_cpu: float
    # PostgreSQL's processes; 0 for SQLite (its work is inside the controller).
    database_cpu: float
    generators_cpu: float
    other_cpu: float
    backlog_end: float
    # The replicas' client connections to PostgreSQL at the end of the window.
    database_connections: int
    # PostgreSQL's disk work over the window, per second: WAL bytes, WAL flushes, commits.
    wal_bytes_per_s: float
    wal_syncs_per_s: float
    commits_per_s: float
    window_seconds: float
    # Cores used before any device connected (idle_seconds > 0), else NaN.
    controllers_idle: float = math.nan
    database_idle: float = math.nan
    errors: dict[str, int] = field(default_factory=dict)
    closed: dict[str, float] = field(default_factory=dict)

    @property
    def streams(self) -> int:
        return sum(self.streams_each)

    @property
    def sustained(self) -> bool:
        """bench/run.py's rule (kept_up)."""
        return kept_up(self.offered_per_s, self.received_per_s, self.backlog_end)

    @property
    def wal_bytes_per_heartbeat(self) -> float:
        return self.wal_bytes_per_s / self.stored_per_s if self.stored_per_s else math.nan

    def per_thousand(self, cores: float) -> float:
        """``cores`` per 1,000 heartbeats/s stored."""
        return 1000 * cores / self.stored_per_s if self.stored_per_s else math.nan

    @property
    def kib_per_stream(self) -> float:
        """Replicas' memory per held stream: (end RSS - idle RSS) over streams, summed."""
        grown = sum(e - i for e, i in zip(self.rss_end_kib, self.rss_idle_kib, strict=True))
        return grown / self.streams if self.streams else math.nan


@dataclass(frozen=True, slots=True)
class _Moment:
    scrapes: tuple[Scrape, ...]
    controllers_cpu: float
    database_cpu: float
    generators_cpu: float
    machine_cpu: float
    at: float
    wal: WalActivity


async def _moment(
    targets: list[Target], generators: list[Generator], pg: BenchPg | None, url: str
) -> _Moment:
    await asyncio.gather(*(g.ask("sample", "sample") for g in generators))
    scrapes = await asyncio.gather(*(scrape(t.metrics_port) for t in targets))
    wal = await asyncio.to_thread(pg.activity, url) if pg is not None else WalActivity(0, 0, 0)
    return _Moment(
        scrapes=tuple(scrapes),
        controllers_cpu=sum(cpu_seconds(t.proc.pid) for t in targets),
        database_cpu=pg.cpu_seconds() if pg is not None else 0.0,
        generators_cpu=sum(cpu_seconds(g.pid) for g in generators),
        machine_cpu=machine_busy_seconds(),
        at=asyncio.get_running_loop().time(),
        wal=wal,
    )


def _result(
    setup: Setup,
    load: Load,
    window: tuple[_Moment, _Moment],
    records: list[Record],
    connected: int,
    rss: tuple[list[int], list[int]],
    connections: int,
    idle: tuple[float, float],
) -> ScaleResult:
    a, b = window
    span = b.at - a.at

    def each(name: str) -> tuple[float, ...]:
        return tuple(
            (end.value(name) - start.value(name)) / span
            for start, end in zip(a.scrapes, b.scrapes, strict=True)
        )

    def cores(pick: str) -> float:
        return float(getattr(b, pick) - getattr(a, pick)) / span

    busy = cores("machine_cpu")
    measured = cores("controllers_cpu") + cores("database_cpu") + cores("generators_cpu")
    closed: dict[str, float] = {}
    for page in b.scrapes:
        for reason, count in page.by_label("schoolfleet_streams_closed_total", "reason").items():
            if count:
                closed[reason] = closed.get(reason, 0.0) + count
    stored = each(CONTROLLER.stored_metric)
    return ScaleResult(
        setup=setup.name,
        load=load.name,
        replicas=setup.replicas,
        devices=load.devices,
        connected=connected,
        offered_per_s=load.offered,
        stored_per_s=sum(stored),
        received_per_s=sum(each(CONTROLLER.received_metric)),
        stored_each=stored,
        streams_each=tuple(int(p.value(CONTROLLER.streams_metric)) for p in b.scrapes),
        rss_idle_kib=tuple(rss[0]),
        rss_end_kib=tuple(rss[1]),
        controllers_cpu=cores("controllers_cpu"),
        database_cpu=cores("database_cpu"),
        generators_cpu=cores("generators_cpu"),
        other_cpu=max(0.0, busy - measured),
        backlog_end=sum(
            p.value(CONTROLLER.received_metric) - p.value(CONTROLLER.stored_metric)
            for p in b.scrapes
        ),
        database_connections=connections,
        wal_bytes_per_s=(b.wal.wal_bytes - a.wal.wal_bytes) / span,
        wal_syncs_per_s=(b.wal.wal_syncs - a.wal.wal_syncs) / span,
        commits_per_s=(b.wal.commits - a.wal.commits) / span,
        window_seconds=span,
        controllers_idle=idle[0],
        database_idle=idle[1],
        errors=merged_errors(records),
        closed=closed,
    )


async def run_setup(
    setup: Setup,
    load: Load,
    pg: BenchPg | None,
    settings: dict[str, str],
    *,
    idle_seconds: float = 0.0,
    keep: bool = False,
) -> ScaleResult:
    """Runs ``load`` against a fresh ``setup`` (``pg`` given for PostgreSQL) and
    measures it (first its cores idle for ``idle_seconds``, if not 0); every process
    it starts is stopped by pid, error or not."""
    workdir = Path(tempfile.mkdtemp(prefix="schoolfleet-scale-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            if setup.store == POSTGRESQL:
                assert pg is not None, "a PostgreSQL setup needs the server"
                url = pg.fresh_database()
                # Registered first, so run last: after every replica has stopped.
                stack.callback(pg.drop, url)
            else:
                url = f"sqlite:{workdir / 'controller.db'}"
            # The server's CPU counts only for the setups that use it.
            server = pg if setup.store == POSTGRESQL else None
            targets = []
            for n in range(setup.replicas):
                target = await start_replica(workdir, url, settings, f"r{n + 1}")
                stack.push_async_callback(stop_process, target.proc)
                targets.append(target)
            await asyncio.gather(*(scrape(t.metrics_port) for t in targets))
            await asyncio.sleep(0.5)
            idle = [rss_kib(t.proc.pid) for t in targets]
            idle_cores = (math.nan, math.nan)
            if idle_seconds > 0:
                before = await _moment(targets, [], server, url)
                await asyncio.sleep(idle_seconds)
                after = await _moment(targets, [], server, url)
                span = after.at - before.at
                idle_cores = (
                    (after.controllers_cpu - before.controllers_cpu) / span,
                    (after.database_cpu - before.database_cpu) / span,
                )

            parts = [
                (targets[replica], first, count)
                for replica, first, count in assign(load.devices, load.procs, setup.replicas)
            ]
            generators, ready = await start_generators(
                stack, parts, load.rate, workdir / "loadgen.log", load.connect_timeout
            )
            connected = sum(int(r["connected"]) for r in ready)
            log.info(
                "%s %s: %d/%d streams open in %.1fs",
                setup.name,
                load.name,
                connected,
                load.devices,
                max(float(r["seconds"]) for r in ready),
            )
            for gen in generators:
                await gen.send("start")
            await asyncio.sleep(load.warmup)
            start = await _moment(targets, generators, server, url)
            await asyncio.sleep(load.seconds)
            end = await _moment(targets, generators, server, url)
            rss_end = [rss_kib(t.proc.pid) for t in targets]
            connections = 0
            if server is not None:
                connections = await asyncio.to_thread(server.backends, url)
            finals = [f for f in await asyncio.gather(*(g.stop() for g in generators)) if f]
            result = _result(
                setup,
                load,
                (start, end),
                [*ready, *finals],
                connected,
                (idle, rss_end),
                connections,
                idle_cores,
            )
            log.info(
                "%s %s: stored %.0f/s (%s), streams %s, controllers %.2f cores, "
                "PostgreSQL %.2f, generators %.2f, other %.2f",
                setup.name,
                load.name,
                result.stored_per_s,
                " + ".join(f"{s:.0f}" for s in result.stored_each),
                "/".join(str(s) for s in result.streams_each),
                result.controllers_cpu,
                result.database_cpu,
                result.generators_cpu,
                result.other_cpu,
            )
            return result
    finally:
        if keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
