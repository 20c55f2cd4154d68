"""One round of the lesson fan-out benchmark, against the controller or the bare server.

A round starts its server on 127.0.0.1, connects the panels from several worker
processes (bench/lessons_loadgen.py), makes every panel's lesson start at one
instant T, waits (bounded) until every panel's answer is in, and collects the
panels' receive times. Every process is started here and stopped by its pid, on
errors and Ctrl-C too; the round's folder is removed unless kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import fanout_lessons as lessons
from bench.observe import cpu_seconds, machine_busy_seconds, scrape_now
from bench.procs import (
    CONTROLLER,
    ROOT,
    Generator,
    Record,
    RunFailed,
    Target,
    TargetKind,
    start_target,
    stop_process,
)
from bench.run import split

log = logging.getLogger("bench")

FANOUT_BARE = TargetKind(
    "fanout-bare",
    "bench_fanout_answers",
    "bench_fanout_answers",
    "bench_fanout_streams",
    module="bench.fanout_bare",
)
# Seconds from the panels being connected to the bare server's push (nothing to import).
BARE_START_IN = 2.0


@dataclass(frozen=True, slots=True)
class Options:
    """What every round is asked to do."""

    panels: int
    procs: int
    heartbeat_interval: float
    start_in: float
    deadline: float
    connect_timeout: float
    keep: bool
    # Controller settings over lessons.SETTINGS (``--set KEY=VALUE``).
    settings: dict[str, str] = field(default_factory=dict)
    profile_dir: Path | None = None
    profile_seconds: float = 8.0


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round measured; times are seconds after the start T."""

    target: str
    panels: int
    connect_seconds: float
    # Sorted, one per panel that got its launch: receive time - T.
    latencies: tuple[float, ...]
    # Controller: every panel's "launched" committed to the store; bare: every answer read.
    all_done: float | None
    # The last answer the server read (controller: lesson_events.received_at).
    last_answer: float | None
    # Controller: the dispatcher's tick (lessons.dispatched_at); bare: the push.
    first_action: float | None
    # Controller: first and last "lessons dispatched" log line, one a batch (ms resolution).
    dispatched_logged: tuple[float, float] | None
    # CPU seconds from T - 0.5 s until all_done (or the deadline), and that window.
    server_cpu: float
    generators_cpu: float
    other_cpu: float
    window: float
    import_seconds: float | None
    # LaunchLesson commands the panels received, counting repeats, and other messages
    # (acks) they received from T - 0.5 s on.
    launches: int
    others: int
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def got(self) -> int:
        """Panels that received their launch."""
        return len(self.latencies)

    def percentile(self, q: float) -> float:
        """Nearest rank over every panel; one that never got its launch is infinitely late."""
        rank = max(1, math.ceil(q / 100 * self.panels))
        return self.latencies[rank - 1] if rank <= self.got else math.inf


@dataclass(frozen=True, slots=True)
class _CpuMark:
    """CPU seconds used so far by each party, at a monotonic instant."""

    at: float
    server: float
    generators: float
    own: float
    machine: float

    @classmethod
    def now(cls, pid: int, workers: list[Generator]) -> _CpuMark:
        return cls(
            time.monotonic(),
            cpu_seconds(pid),
            sum(cpu_seconds(w.pid) for w in workers),
            cpu_seconds(os.getpid()),
            machine_busy_seconds(),
        )


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a round saw besides the panels' own times."""

    start: float
    done_at: float | None
    cpu: tuple[_CpuMark, _CpuMark]
    results: list[Record]
    first_action: float | None = None
    last_answer: float | None = None
    imported: float | None = None
    logged: tuple[float, float] | None = None
    others_before: int = 0


async def _workers(
    stack: contextlib.AsyncExitStack, target: Target, opts: Options, log_path: Path
) -> tuple[list[Generator], float]:
    """Starts the panel workers and waits until every panel is connected."""
    workers = []
    for first, count in split(opts.panels, opts.procs):
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
    connected = sum(r["connected"] for r in ready)
    seconds = max(r["seconds"] for r in ready)
    log.info(
        "%s: %d/%d panels connected in %.1fs", target.kind.name, connected, opts.panels, seconds
    )
    if connected < opts.panels:
        raise RunFailed(f"only {connected} of {opts.panels} panels connected: {ready}")
    return workers, seconds


async def _others(workers: list[Generator]) -> int:
    """Messages other than LaunchLesson the panels have received so far."""
    samples = await asyncio.gather(*(w.ask("sample", "sample") for w in workers))
    return sum(int(s["others"]) for s in samples)


async def _until(poll: Callable[..., float | None], *args: object) -> float | None:
    """Runs a polling function in a thread; a cancelled wait stops it too."""
    quit = threading.Event()
    try:
        return await asyncio.to_thread(poll, *args, quit)
    finally:
        quit.set()


def _wait_answered(port: int, panels: int, deadline: float, quit: threading.Event) -> float | None:
    """Polls the bare server until it has read every answer; the wall time it noted."""
    while time.time() < deadline and not quit.is_set():
        page = scrape_now(port)
        if page.value("bench_fanout_answers") >= panels:
            return page.value("bench_fanout_answered_at")
        time.sleep(0.2)
    return None


async def run_round(kind: TargetKind, opts: Options, index: int) -> RoundResult:
    """One round against a fresh server of ``kind`` (CONTROLLER or FANOUT_BARE)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"schoolfleet-fanout-{kind.name}-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            token = await lessons.create_user(workdir) if kind is CONTROLLER else ""
            settings = {**lessons.SETTINGS, **opts.settings} if kind is CONTROLLER else {}
            target = await start_target(kind, workdir, settings)
            stack.push_async_callback(stop_process, target.proc)
            workers, connect_s = await _workers(stack, target, opts, workdir / "loadgen.log")
            if kind is CONTROLLER:
                seen = await _controller_fanout(stack, target, token, workers, opts, index)
            else:
                seen = await _bare_fanout(target, workers, opts)
            return _result(kind, opts, seen, connect_s)
    finally:
        if opts.keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _controller_fanout(
    stack: contextlib.AsyncExitStack,
    target: Target,
    token: str,
    workers: list[Generator],
    opts: Options,
    index: int,
) -> _Seen:
    """Imports the lessons, all starting at T, and waits until every launch is stored."""
    pid, workdir = target.proc.pid, target.log.parent
    start = math.ceil(time.time()) + opts.start_in
    files = lessons.write_schedules(workdir, opts.panels, start)
    imported = await lessons.import_schedules(target, token, files, opts.panels)
    log.info("imported %d lessons in %.1fs", opts.panels, imported)
    if time.time() > start - 1.0:
        raise RunFailed(f"the import ended {time.time() - start:+.1f}s from the start")
    if opts.profile_dir is not None:
        out = opts.profile_dir / f"controller-round{index}.txt"
        await lessons.profile(stack, pid, out, opts.profile_seconds, start)
        log.info("py-spy on pid %d into %s", pid, out)
    await asyncio.sleep(max(0.0, start - 0.5 - time.time()))
    others = await _others(workers)
    before = _CpuMark.now(pid, workers)
    database = workdir / "controller.db"
    done_at = await _until(lessons.wait_launched, database, opts.panels, start + opts.deadline)
    after = _CpuMark.now(pid, workers)
    results = await asyncio.gather(*(w.ask("results", "results") for w in workers))
    tick, last = lessons.store_figures(database, start)
    logged = lessons.dispatch_log(target.log, start)
    return _Seen(start, done_at, (before, after), results, tick, last, imported, logged, others)


async def _bare_fanout(target: Target, workers: list[Generator], opts: Options) -> _Seen:
    """Has the bare server push at T, and waits until it has read every answer."""
    pid = target.proc.pid
    start = math.ceil(time.time()) + BARE_START_IN
    await asyncio.sleep(max(0.0, start - 0.5 - time.time()))
    others = await _others(workers)
    before = _CpuMark.now(pid, workers)
    await asyncio.sleep(max(0.0, start - time.time()))
    os.kill(pid, signal.SIGUSR1)
    done_at = await _until(_wait_answered, target.metrics_port, opts.panels, start + opts.deadline)
    after = _CpuMark.now(pid, workers)
    results = await asyncio.gather(*(w.ask("results", "results") for w in workers))
    pushed = scrape_now(target.metrics_port).value("bench_fanout_push_at") - start
    last = None if done_at is None else done_at - start
    return _Seen(start, done_at, (before, after), results, pushed, last, others_before=others)


def _result(kind: TargetKind, opts: Options, seen: _Seen, connect_s: float) -> RoundResult:
    a, b = seen.cpu
    latencies: list[float] = []
    errors: dict[str, int] = {}
    for r in seen.results:
        latencies += [t - seen.start for t in r["launch_at"]]
        for reason, count in r["errors"].items():
            errors[reason] = errors.get(reason, 0) + count
    server, generators = b.server - a.server, b.generators - a.generators
    return RoundResult(
        target=kind.name,
        panels=opts.panels,
        connect_seconds=connect_s,
        latencies=tuple(sorted(latencies)),
        all_done=None if seen.done_at is None else seen.done_at - seen.start,
        last_answer=seen.last_answer,
        first_action=seen.first_action,
        dispatched_logged=seen.logged,
        server_cpu=server,
        generators_cpu=generators,
        other_cpu=max(0.0, b.machine - a.machine - server - generators - (b.own - a.own)),
        window=b.at - a.at,
        import_seconds=seen.imported,
        launches=sum(r["launches"] for r in seen.results),
        others=sum(r["others"] for r in seen.results) - seen.others_before,
        errors=errors,
    )
