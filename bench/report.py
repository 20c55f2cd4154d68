"""The benchmark's record: a markdown block to paste into docs/benchmarks.md."""

from __future__ import annotations

import math
import os
import platform
import resource
import sqlite3
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from google import protobuf

from bench.procs import CONTROLLER, ROOT
from bench.run import MAX_DEVICES_PER_PROCESS, RunResult, median

AIM_STORED_PER_S = 5000.0
AIM_STREAMS = 10_000


@dataclass(frozen=True, slots=True)
class Machine:
    """Where the figures were measured."""

    cores: int
    model: str
    memory_gib: float
    python: str
    grpcio: str
    protobuf: str
    sqlite: str
    open_files: int

    def line(self) -> str:
        """One markdown line describing the machine."""
        return (
            f"{self.cores} cores ({self.model}), {self.memory_gib:.1f} GiB RAM; "
            f"Python {self.python}, grpcio {self.grpcio}, protobuf {self.protobuf}, "
            f"SQLite {self.sqlite}; open-files limit {self.open_files:,} per process."
        )


def machine() -> Machine:
    """Reads the machine's description from /proc and the libraries."""
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    memory_kib = 0
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return Machine(
        cores=len(os.sched_getaffinity(0)),
        model=model,
        memory_gib=memory_kib / 1024 / 1024,
        python=platform.python_version(),
        grpcio=grpc.__version__,
        protobuf=protobuf.__version__,
        sqlite=sqlite3.sqlite_version,
        open_files=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    )


def revision() -> str:
    """The commit the measured code is at, ``-dirty`` if tracked files differ from it."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


Pick = Callable[[RunResult], float | None]


def _runs(results: Sequence[RunResult], pick: Pick, digits: int = 0) -> str:
    return " / ".join(_n(pick(r), digits) for r in results)


def _med(results: Sequence[RunResult], pick: Pick) -> float:
    return median([v for r in results if (v := pick(r)) is not None])


def _cell(results: Sequence[RunResult], pick: Pick, digits: int = 0) -> str:
    """The median, then each run's figure: ``1,234 (1,200 / 1,234 / 1,300)``."""
    if not results:
        return "-"
    if len(results) == 1:
        return _n(pick(results[0]), digits)
    return f"{_n(_med(results, pick), digits)} ({_runs(results, pick, digits)})"


def _flush(results: Sequence[RunResult]) -> str:
    return (
        f"{_n(_med(results, lambda r: r.flushes_per_s), 1)}/s, "
        f"{_n(_med(results, lambda r: r.flush_batch_mean))} rows, "
        f"{_n(_med(results, lambda r: r.flush_ms_mean), 1)} ms"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _kept(results: Sequence[RunResult]) -> str:
    return " / ".join("yes" if r.sustained else "no" for r in results) or "-"


def _cpu_per_k(r: RunResult) -> float:
    return 1000 * r.target_cpu / r.stored_per_s if r.stored_per_s else math.nan


def _pair_table(bare: Sequence[RunResult], controller: Sequence[RunResult]) -> list[str]:
    """Bare server and controller side by side: medians, each run in brackets."""

    def row(label: str, pick: Pick, digits: int = 0, *, both: bool = True) -> str:
        left = _cell(bare, pick, digits) if both else "-"
        return f"| {label} | {left} | {_cell(controller, pick, digits)} |"

    return [
        "Medians, each run's figure in brackets (run 1 / run 2 / ...).",
        "",
        "| figure | bare grpc.aio server | controller (SQLite) |",
        "|---|---|---|",
        "| **heartbeats/s**: bare: received; controller: durably stored "
        f"| **{_cell(bare, lambda r: r.stored_per_s)}** "
        f"| **{_cell(controller, lambda r: r.stored_per_s)}** |",
        row("heartbeats/s received by the controller", lambda r: r.received_per_s, both=False),
        f"| kept up (received ≥ 97% of offered, ≤ 2 s of it unstored at the end) "
        f"| {_kept(bare)} | {_kept(controller)} |",
        row("received, not yet stored at the end", lambda r: r.backlog_end, both=False),
        row("heartbeats/s acked to the devices (end to end)", lambda r: r.acked_per_s, both=False),
        row("ack messages/s read by the devices", lambda r: r.acks_per_s, both=False),
        row("heartbeats/s the generators' gRPC clients accepted", lambda r: r.sent_per_s),
        row("server CPU, cores", lambda r: r.target_cpu, 2),
        row("server CPU per 1,000 heartbeats/s, cores", _cpu_per_k, 3),
        row("generators' CPU, cores", lambda r: r.generators_cpu, 2),
        row("other processes' CPU, cores (noise)", lambda r: r.other_cpu, 2),
        f"| streams open | {_runs(bare, lambda r: r.streams_held)} "
        f"| {_runs(controller, lambda r: r.streams_held)} |",
        f"| store flushes (median): per second, mean rows, mean time | - | {_flush(controller)} |",
        "",
    ]


def _ratios(controller: Sequence[RunResult], bare: Sequence[RunResult], pick: Pick) -> list[float]:
    pairs = zip(controller, bare, strict=False)
    return [a / b for c, r in pairs if (a := pick(c)) is not None and (b := pick(r))]


def ceiling_section(
    bare: Sequence[RunResult], controller: Sequence[RunResult], seconds: float
) -> list[str]:
    """The controller against the bare server, both offered more than either can take."""
    if not controller or not bare:
        return []
    first = controller[0]
    ratios = _ratios(controller, bare, lambda r: r.stored_per_s)
    return [
        f"### Ceiling: {first.devices:,} devices offering {first.offered_per_s:,.0f} "
        f"heartbeats/s, {seconds:g} s windows, {_plural(len(controller), 'run')} each",
        "",
        *_pair_table(bare, controller),
        f"**Controller / bare server: {median(ratios):.2f}** (median of the per-run ratios "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; each pair measured back to back).",
        "",
        *_problems([*bare, *controller]),
    ]


def aim_section(
    bare: Sequence[RunResult], controller: Sequence[RunResult], seconds: float
) -> list[str]:
    """Both servers offered exactly the aim: does the controller keep up, at what CPU?"""
    if not controller:
        return []
    first = controller[0]
    lines = [
        f"### Aim: {first.devices:,} devices offering {first.offered_per_s:,.0f} heartbeats/s, "
        f"{seconds:g} s windows, {_plural(len(controller), 'run')} each",
        "",
        *_pair_table(bare, controller),
    ]
    if bare:
        ratios = _ratios(controller, bare, _cpu_per_k)
        lines += [
            f"**At the same load the controller uses {median(ratios):.1f} times the bare server's "
            f"CPU per heartbeat** (per-run ratios {', '.join(f'{r:.1f}' for r in ratios)}).",
            "",
        ]
    return [*lines, *_problems([*bare, *controller])]


def scale_section(
    controller: RunResult | None, bare: RunResult | None, interval: float
) -> list[str]:
    """Streams held, memory per stream and ingest at the real heartbeat interval."""
    results = [r for r in (controller, bare) if r is not None]
    if not results:
        return []
    first = results[0]

    def row(label: str, pick: Pick, digits: int = 0) -> str:
        return f"| {label} | {' | '.join(_n(pick(r), digits) for r in results)} |"

    names = ["controller (SQLite)" if r.target == CONTROLLER.name else "bare" for r in results]
    lines = [
        f"### Scale: {first.devices:,} devices, one TCP connection each, spread over "
        f"{math.ceil(first.devices / MAX_DEVICES_PER_PROCESS)} generator processes; "
        f"one heartbeat per device every {interval:g} s",
        "",
        f"| figure | {' | '.join(names)} |",
        "|---|" + "---|" * len(results),
        row("**streams open** (server's gauge, end of window)", lambda r: r.streams_held),
        row("streams the generators opened", lambda r: r.connected),
        row("seconds to open them all", lambda r: r.connect_seconds, 1),
        row("RSS before any stream, MiB", lambda r: r.rss_idle_kib / 1024, 1),
        row("RSS with all streams open, MiB", lambda r: r.rss_held_kib / 1024, 1),
        row("RSS at the end of the window, MiB", lambda r: r.rss_end_kib / 1024, 1),
        row("**KiB per stream** (end RSS - idle RSS) / streams", lambda r: r.kib_per_stream, 1),
        row("heartbeats/s offered", lambda r: r.offered_per_s),
        row("heartbeats/s stored (bare: received)", lambda r: r.stored_per_s),
        row("server CPU, cores", lambda r: r.target_cpu, 2),
        row("other processes' CPU, cores (noise)", lambda r: r.other_cpu, 2),
        row("seconds to shut down (SIGTERM to exit)", lambda r: r.shutdown_seconds, 1),
        "",
    ]
    return [*lines, *_problems(results)]


def _problems(results: Sequence[RunResult]) -> list[str]:
    lines = []
    for r in results:
        if r.errors:
            lines.append(f"- {r.target} {r.load}: device errors {r.errors}")
        unexpected = {k: v for k, v in r.closed.items() if k != "agent_closed"}
        if unexpected:
            lines.append(f"- {r.target} {r.load}: streams closed by reason {unexpected}")
    return [*lines, ""] if lines else []


def aims(
    ceiling: Sequence[RunResult], aim: Sequence[RunResult], scale: RunResult | None
) -> list[str]:
    """Whether the issue's aims were met, one line each."""
    lines = []
    if ceiling or aim:
        found = []
        for runs in (aim, ceiling):
            if runs:
                stored = median([r.stored_per_s for r in runs])
                found.append(f"offered {runs[0].offered_per_s:,.0f}/s, it stored {stored:,.0f}/s")
        if aim:
            # Offered exactly the aim: it must keep up, run after run.
            kept = sum(r.sustained for r in aim)
            found[0] += f" and kept up in {kept} of {len(aim)} runs"
            verdict = "met" if kept == len(aim) else "**borderline**" if kept else "**not met**"
        else:
            stored = median([r.stored_per_s for r in ceiling])
            verdict = "met" if stored >= AIM_STORED_PER_S else "**not met**"
        lines.append(
            f"- ≥ {AIM_STORED_PER_S:,.0f} heartbeats/s durably stored by one controller: "
            f"{verdict} (medians: {'; '.join(found)})."
        )
    if scale is not None:
        met = scale.streams_held >= AIM_STREAMS
        lines.append(
            f"- {AIM_STREAMS:,} simultaneous device streams held by one controller: "
            f"{'met' if met else '**not met**'} ({scale.streams_held:,} held, "
            f"{scale.kib_per_stream:.1f} KiB each)."
        )
    return lines


def record(
    *,
    command: str,
    minutes: float,
    seconds: float,
    settings: dict[str, str],
    ceiling: tuple[Sequence[RunResult], Sequence[RunResult]],
    aim: tuple[Sequence[RunResult], Sequence[RunResult]],
    scale: tuple[RunResult | None, RunResult | None],
    interval: float,
) -> list[str]:
    """The whole markdown record, line by line."""
    configured = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    return [
        "## Ingest (bench/ingest.py)",
        "",
        f"Machine: {machine().line()}",
        "",
        f"Code at `{revision()}`; controller settings: {configured}.",
        "",
        f"Command (took {minutes:.1f} min): `{command}`",
        "",
        *ceiling_section(ceiling[0], ceiling[1], seconds),
        *aim_section(aim[0], aim[1], seconds),
        *scale_section(scale[0], scale[1], interval),
        "Aims:",
        "",
        *aims(ceiling[1], aim[1], scale[0]),
    ]
