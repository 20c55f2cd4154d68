"""The lesson fan-out over three replicas on one PostgreSQL database: one round.

bench/lesson_fanout.py's measurement (bench/fanout_run.py, bench/fanout_lessons.py),
with the panels spread over the replicas: one panel worker process
(bench/lessons_loadgen.py) per replica, connected to that replica's address. The
schedule is imported through the first replica with the real ``schoolctl``; the
dispatcher runs on whichever replica holds its lease, sends the launches of its own
panels on their streams and relays the others' through LISTEN/NOTIFY to the replicas
holding them. "Every launched committed" is polled in PostgreSQL every 20 ms from
the benchmark's own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench import fanout_lessons as lessons
from bench.fanout_run import Options, RoundResult
from bench.observe import cpu_seconds, machine_busy_seconds, scrape
from bench.procs import ROOT, Generator, Record, RunFailed, Target, stop_process
from bench.run import split
from bench.scale_pg import BenchPg
from bench.scale_procs import create_user, start_replica

log = logging.getLogger("bench")

LEASE = "lesson-dispatcher"


@dataclass(frozen=True, slots=True)
class ReplicaRound:
    """A round on the replicas: the panels' figures (as one controller's) and the
    database's CPU over the same window."""

    figures: RoundResult
    replicas: int
    database_cpu: float
    # Which replica held the dispatcher (1-based), and the panels each replica held.
    dispatcher: int
    panels_each: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Mark:
    at: float
    replicas: float
    database: float
    generators: float
    own: float
    machine: float


def _mark(targets: list[Target], workers: list[Generator], pg: BenchPg) -> _Mark:
    return _Mark(
        time.monotonic(),
        sum(cpu_seconds(t.proc.pid) for t in targets),
        pg.cpu_seconds(),
        sum(cpu_seconds(w.pid) for w in workers),
        cpu_seconds(os.getpid()),
        machine_busy_seconds(),
    )


async def _panel_workers(
    stack: contextlib.AsyncExitStack, targets: list[Target], opts: Options, log_path: Path
) -> tuple[list[Generator], float]:
    """One panel worker per replica, each connecting its share of the panels there."""
    workers = []
    for target, (first, count) in zip(targets, split(opts.panels, len(targets)), strict=False):
        with log_path.open("ab") as log_fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.lessons_loadgen",
                f"--target={target.address}",
                f"--first={first}",
                f"--count={count}",
                f"--heartbeat-interval={opts.heartbeat_interval!r}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_fh,
                cwd=ROOT,
                env=lessons.child_env(),
                limit=2**24,  # the results line holds every panel's time
            )
        worker = Generator(proc)
        stack.push_async_callback(worker.stop)
        workers.append(worker)
    ready = await asyncio.gather(*(w.expect("ready", opts.connect_timeout) for w in workers))
    connected = sum(int(r["connected"]) for r in ready)
    seconds = max(float(r["seconds"]) for r in ready)
    log.info("replicas: %d/%d panels connected in %.1fs", connected, opts.panels, seconds)
    if connected < opts.panels:
        raise RunFailed(f"only {connected} of {opts.panels} panels connected: {ready}")
    return workers, seconds


def _wait_launched(url: str, panels: int, deadline: float, quit: threading.Event) -> float | None:
    """Polls PostgreSQL until every panel's launch is committed; the wall time."""
    with psycopg.connect(url, autocommit=True) as conn:
        while time.time() < deadline and not quit.is_set():
            row = conn.execute(
                "SELECT count(*) FROM lesson_panels WHERE launched_at IS NOT NULL"
            ).fetchone()
            if row is not None and row[0] >= panels:
                return time.time()
            time.sleep(lessons.POLL_SECONDS)
    return None


def _store_figures(url: str, start: float) -> tuple[float | None, float | None]:
    """The dispatcher's tick and the last answer read, from the store, after T."""
    with psycopg.connect(url, autocommit=True) as conn:
        tick = conn.execute("SELECT min(dispatched_at) FROM lessons").fetchone()
        last = conn.execute(
            "SELECT max(received_at) FROM lesson_events WHERE kind = 'launched'"
        ).fetchone()
    first = tick[0] if tick else None
    answered = last[0] if last else None
    return (
        None if first is None else float(first) - start,
        None if answered is None else float(answered) - start,
    )


async def _until_launched(url: str, panels: int, deadline: float) -> float | None:
    quit = threading.Event()
    try:
        return await asyncio.to_thread(_wait_launched, url, panels, deadline, quit)
    finally:
        quit.set()


async def replica_round(pg: BenchPg, opts: Options, replicas: int) -> ReplicaRound:
    """One round on ``replicas`` controllers sharing a fresh database."""
    workdir = Path(tempfile.mkdtemp(prefix="schoolfleet-scale-fanout-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            url = pg.fresh_database()
            stack.callback(pg.drop, url)
            token = await create_user(workdir, url)
            settings = {**lessons.SETTINGS, **opts.settings}
            targets = []
            for n in range(replicas):
                target = await start_replica(workdir, url, settings, f"r{n + 1}")
                stack.push_async_callback(stop_process, target.proc)
                targets.append(target)
            workers, connect_s = await _panel_workers(stack, targets, opts, workdir / "gen.log")
            return await _fan_out(targets, workers, token, url, pg, opts, workdir, connect_s)
    finally:
        if opts.keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _fan_out(
    targets: list[Target],
    workers: list[Generator],
    token: str,
    url: str,
    pg: BenchPg,
    opts: Options,
    workdir: Path,
    connect_s: float,
) -> ReplicaRound:
    start = math.ceil(time.time()) + opts.start_in
    files = lessons.write_schedules(workdir, opts.panels, start)
    imported = await lessons.import_schedules(targets[0], token, files, opts.panels)
    log.info("imported %d lessons in %.1fs", opts.panels, imported)
    if time.time() > start - 1.0:
        raise RunFailed(f"the import ended {time.time() - start:+.1f}s from the start")
    pages = await asyncio.gather(*(scrape(t.metrics_port) for t in targets))
    held = [n for n, p in enumerate(pages, 1) if p.value("schoolfleet_lease_held", lease=LEASE)]
    panels_each = tuple(int(p.value("schoolfleet_connected_streams")) for p in pages)
    await asyncio.sleep(max(0.0, start - 0.5 - time.time()))
    samples = await asyncio.gather(*(w.ask("sample", "sample") for w in workers))
    others_before = sum(int(s["others"]) for s in samples)
    before = _mark(targets, workers, pg)
    done_at = await _until_launched(url, opts.panels, start + opts.deadline)
    after = _mark(targets, workers, pg)
    results: list[Record] = await asyncio.gather(*(w.ask("results", "results") for w in workers))
    tick, last = _store_figures(url, start)
    stamps = [s for t in targets if (s := lessons.dispatch_log(t.log, start))]
    logged = (min(s[0] for s in stamps), max(s[1] for s in stamps)) if stamps else None
    latencies: list[float] = []
    errors: dict[str, int] = {}
    for r in results:
        latencies += [t - start for t in r["launch_at"]]
        for reason, count in r["errors"].items():
            errors[reason] = errors.get(reason, 0) + count
    span = after.at - before.at
    server = after.replicas - before.replicas
    database = after.database - before.database
    generators = after.generators - before.generators
    busy = after.machine - before.machine - (after.own - before.own)
    figures = RoundResult(
        target=f"{len(targets)} replicas (PostgreSQL)",
        panels=opts.panels,
        connect_seconds=connect_s,
        latencies=tuple(sorted(latencies)),
        all_done=None if done_at is None else done_at - start,
        last_answer=last,
        first_action=tick,
        dispatched_logged=logged,
        server_cpu=server,
        generators_cpu=generators,
        other_cpu=max(0.0, busy - server - database - generators),
        window=span,
        import_seconds=imported,
        launches=sum(int(r["launches"]) for r in results),
        others=sum(int(r["others"]) for r in results) - others_before,
        errors=errors,
    )
    return ReplicaRound(figures, len(targets), database, held[0] if held else 0, panels_each)
