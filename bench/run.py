"""One measured run: a fresh server, its simulated devices, one measurement window.

The sequence: start the server (fresh temporary folder and database), read its
idle RSS, open every device's stream over ``procs`` generator processes, read the
streams gauge and RSS with all streams held, start heartbeats, let them settle for
``warmup`` seconds, then sample the server's counters, CPU time and the generators'
counters at the start and the end of a ``seconds``-long window. Everything is
stopped by pid on the way out, error or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.observe import Scrape, cpu_seconds, machine_busy_seconds, rss_kib, scrape
from bench.procs import (
    CONTROLLER,
    Generator,
    Record,
    TargetKind,
    merged_errors,
    start_generators,
    start_target,
    stop_process,
)

log = logging.getLogger("bench")

# The open-files limit is 20,000 per process; one connection per device.
MAX_DEVICES_PER_PROCESS = 4000


@dataclass(frozen=True, slots=True)
class Load:
    """What the simulated devices do in one run."""

    name: str
    devices: int
    procs: int
    # Heartbeats per second per device.
    rate: float
    warmup: float
    seconds: float
    connect_timeout: float = 300.0

    @property
    def offered(self) -> float:
        """Heartbeats per second asked of all devices together."""
        return self.devices * self.rate


@dataclass(frozen=True, slots=True)
class RunResult:
    """The figures of one run against one server."""

    target: str
    load: str
    devices: int
    connected: int
    connect_seconds: float
    streams_held: int
    offered_per_s: float
    sent_per_s: float
    stored_per_s: float
    received_per_s: float
    acked_per_s: float
    # Messages the devices read after their Welcome: one per ack.
    acks_per_s: float
    rss_idle_kib: int
    rss_held_kib: int
    rss_end_kib: int
    target_cpu: float
    generators_cpu: float
    # Everything else on the machine (the orchestrator, other people's work): noise.
    other_cpu: float
    window_seconds: float
    shutdown_seconds: float
    # Heartbeats received but not yet stored, at the end of the window.
    backlog_end: float
    flush_batch_mean: float | None = None
    flush_ms_mean: float | None = None
    flushes_per_s: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    closed: dict[str, float] = field(default_factory=dict)

    @property
    def sustained(self) -> bool:
        return kept_up(self.offered_per_s, self.received_per_s, self.backlog_end)

    @property
    def kib_per_stream(self) -> float:
        """Server memory per held stream, with heartbeats flowing (end of the window)."""
        if self.streams_held == 0:
            return math.nan
        return (self.rss_end_kib - self.rss_idle_kib) / self.streams_held


@dataclass(frozen=True, slots=True)
class _Moment:
    scrape: Scrape
    target_cpu: float
    generators_cpu: float
    machine_cpu: float
    sent: int
    acked: int
    downstream: int


def kept_up(offered_per_s: float, received_per_s: float, backlog_end: float) -> bool:
    """Whether a server kept up: it received at least 97% of the offered load and held
    at most 2 s of it unstored at the end. (Stored/s alone moves in steps of one batch,
    coarse when batches are large.)"""
    return received_per_s >= 0.97 * offered_per_s and backlog_end <= 2 * offered_per_s


def split(devices: int, procs: int) -> list[tuple[int, int]]:
    """(first, count) for each process, as even as can be."""
    base, extra = divmod(devices, procs)
    shares, first = [], 0
    for i in range(procs):
        count = base + (1 if i < extra else 0)
        shares.append((first, count))
        first += count
    return [s for s in shares if s[1] > 0]


async def _moment(port: int, pid: int, generators: list[Generator]) -> _Moment:
    samples = await asyncio.gather(*(g.ask("sample", "sample") for g in generators))
    snapshot = await scrape(port)
    return _Moment(
        scrape=snapshot,
        target_cpu=cpu_seconds(pid),
        generators_cpu=sum(cpu_seconds(g.pid) for g in generators),
        machine_cpu=machine_busy_seconds(),
        sent=sum(s["sent"] for s in samples),
        acked=sum(s["acked"] for s in samples),
        downstream=sum(s["received"] for s in samples),
    )


async def run_once(
    kind: TargetKind,
    load: Load,
    controller_settings: dict[str, str],
    keep: bool = False,
    tree: Path | None = None,
) -> RunResult:
    """Runs ``load`` against a fresh ``kind`` server (from ``tree``, if given) and
    measures it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"schoolfleet-bench-{kind.name}-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            target = await start_target(kind, workdir, controller_settings, tree)
            stack.push_async_callback(stop_process, target.proc)
            pid = target.proc.pid
            await scrape(target.metrics_port)
            await asyncio.sleep(0.5)
            rss_idle = rss_kib(pid)

            parts = [(target, first, count) for first, count in split(load.devices, load.procs)]
            generators, ready = await start_generators(
                stack, parts, load.rate, workdir / "loadgen.log", load.connect_timeout
            )
            log.info(
                "%s %s: %d/%d streams open in %.1fs",
                kind.name,
                load.name,
                sum(r["connected"] for r in ready),
                load.devices,
                max(r["seconds"] for r in ready),
            )
            await asyncio.sleep(1.0)
            rss_held = rss_kib(pid)

            for gen in generators:
                await gen.send("start")
            await asyncio.sleep(load.warmup)
            start = await _moment(target.metrics_port, pid, generators)
            await asyncio.sleep(load.seconds)
            end = await _moment(target.metrics_port, pid, generators)
            rss_end = rss_kib(pid)

            finals = [f for f in await asyncio.gather(*(g.stop() for g in generators)) if f]
            shutdown = await stop_process(target.proc, grace=60.0)
            result = _result(
                kind,
                load,
                (start, end),
                ready,
                finals,
                rss=(rss_idle, rss_held, rss_end),
                shutdown=shutdown,
            )
            log.info(
                "%s %s: stored %.0f/s (received %.0f/s, sent %.0f/s), %d streams, "
                "%.1f KiB/stream, server CPU %.2f cores, generators %.2f",
                kind.name,
                load.name,
                result.stored_per_s,
                result.received_per_s,
                result.sent_per_s,
                result.streams_held,
                result.kib_per_stream,
                result.target_cpu,
                result.generators_cpu,
            )
            return result
    finally:
        if keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _result(
    kind: TargetKind,
    load: Load,
    window: tuple[_Moment, _Moment],
    ready: list[Record],
    finals: list[Record],
    *,
    rss: tuple[int, int, int],
    shutdown: float,
) -> RunResult:
    start, end = window
    a, b = start.scrape, end.scrape
    span = b.at - a.at

    def rate(name: str) -> float:
        return (b.value(name) - a.value(name)) / span

    flush_batch = flush_ms = flushes_per_s = None
    if kind is CONTROLLER:
        flushes = b.value("schoolfleet_store_flush_seconds_count") - a.value(
            "schoolfleet_store_flush_seconds_count"
        )
        rows = b.value("schoolfleet_store_flush_batch_size_sum") - a.value(
            "schoolfleet_store_flush_batch_size_sum"
        )
        secs = b.value("schoolfleet_store_flush_seconds_sum") - a.value(
            "schoolfleet_store_flush_seconds_sum"
        )
        if flushes:
            flush_batch, flush_ms = rows / flushes, 1000 * secs / flushes
        flushes_per_s = flushes / span
    closed = {
        reason: count
        for reason, count in b.by_label("schoolfleet_streams_closed_total", "reason").items()
        if count
    }
    return RunResult(
        target=kind.name,
        load=load.name,
        devices=load.devices,
        connected=sum(r["connected"] for r in ready),
        connect_seconds=max(r["seconds"] for r in ready),
        streams_held=int(b.value(kind.streams_metric)),
        offered_per_s=load.offered,
        sent_per_s=(end.sent - start.sent) / span,
        stored_per_s=rate(kind.stored_metric),
        received_per_s=rate(kind.received_metric),
        acked_per_s=(end.acked - start.acked) / span,
        acks_per_s=(end.downstream - start.downstream) / span,
        rss_idle_kib=rss[0],
        rss_held_kib=rss[1],
        rss_end_kib=rss[2],
        target_cpu=(end.target_cpu - start.target_cpu) / span,
        generators_cpu=(end.generators_cpu - start.generators_cpu) / span,
        other_cpu=max(
            0.0,
            (end.machine_cpu - start.machine_cpu)
            - (end.target_cpu - start.target_cpu)
            - (end.generators_cpu - start.generators_cpu),
        )
        / span,
        window_seconds=span,
        shutdown_seconds=shutdown,
        backlog_end=b.value(kind.received_metric) - b.value(kind.stored_metric),
        flush_batch_mean=flush_batch,
        flush_ms_mean=flush_ms,
        flushes_per_s=flushes_per_s,
        errors=merged_errors([*ready, *finals]),
        closed=closed,
    )


def median(values: list[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else math.nan
