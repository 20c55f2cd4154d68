"""The scale-out benchmark's record: markdown tables for docs/benchmarks.md, and the
per-stream and per-heartbeat costs solved from two loads."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.fanout_run import RoundResult
from bench.run import median
from bench.scale_fanout import ReplicaRound
from bench.scale_ingest import SETUPS, ScaleResult
from bench.scale_storm import StormRound

Pick = Callable[[ScaleResult], float]


def n(value: float | None, digits: int = 0) -> str:
    """A figure for a table: thousands separated, '-' for none."""
    if value is None or math.isnan(value):
        return "-"
    return "not reached" if math.isinf(value) else f"{value:,.{digits}f}"


def cell(values: Sequence[float], digits: int = 0) -> str:
    """The median in bold, then each run's figure: ``**1,234** (1,200 / 1,234)``."""
    if not values:
        return "-"
    if len(values) == 1:
        return n(values[0], digits)
    runs = " / ".join(n(v, digits) for v in values)
    return f"**{n(median(list(values)), digits)}** ({runs})"


def by_setup(results: Sequence[ScaleResult]) -> dict[str, list[ScaleResult]]:
    """The runs of each setup, in SETUPS' order (setups not run left out)."""
    grouped: dict[str, list[ScaleResult]] = {}
    for setup in SETUPS:
        runs = [r for r in results if r.setup == setup.name]
        if runs:
            grouped[setup.name] = runs
    return grouped


def ratios_to_first(rounds: Sequence[Sequence[ScaleResult]], pick: Pick) -> dict[str, list[float]]:
    """Per setup, ``pick`` over the first setup's in the same round."""
    out: dict[str, list[float]] = {}
    for results in rounds:
        base = next((r for r in results if r.setup == SETUPS[0].name), None)
        if base is None or not pick(base):
            continue
        for r in results:
            out.setdefault(r.setup, []).append(pick(r) / pick(base))
    return out


def _ctl(r: ScaleResult) -> float:
    return r.controllers_cpu


def _db(r: ScaleResult) -> float:
    return r.database_cpu


def _ctl_idle(r: ScaleResult) -> float:
    return r.controllers_idle


def _db_idle(r: ScaleResult) -> float:
    return r.database_idle


INGEST_ROWS: list[tuple[str, Pick, int]] = [
    ("**heartbeats/s stored** (all controllers)", lambda r: r.stored_per_s, 0),
    ("heartbeats/s received", lambda r: r.received_per_s, 0),
    ("heartbeats/s stored per controller", lambda r: r.stored_per_s / r.replicas, 0),
    ("received, not yet stored at the end", lambda r: r.backlog_end, 0),
    ("controllers' CPU, cores (all)", lambda r: r.controllers_cpu, 2),
    ("PostgreSQL's CPU, cores", lambda r: r.database_cpu, 2),
    ("generators' CPU, cores", lambda r: r.generators_cpu, 2),
    ("other processes' CPU, cores (noise)", lambda r: r.other_cpu, 2),
    ("**controllers' CPU per 1,000 heartbeats/s**, cores", lambda r: r.per_thousand(_ctl(r)), 3),
    ("**PostgreSQL's CPU per 1,000 heartbeats/s**, cores", lambda r: r.per_thousand(_db(r)), 3),
    ("PostgreSQL client connections (end of window)", lambda r: r.database_connections, 0),
    ("PostgreSQL: commits/s", lambda r: r.commits_per_s, 0),
    ("PostgreSQL: WAL flushes (fsync)/s", lambda r: r.wal_syncs_per_s, 0),
    ("PostgreSQL: WAL KiB/s", lambda r: r.wal_bytes_per_s / 1024, 0),
    ("PostgreSQL: **WAL bytes per heartbeat**", lambda r: r.wal_bytes_per_heartbeat, 0),
]  # fmt: skip


def ingest_table(rounds: Sequence[Sequence[ScaleResult]]) -> list[str]:
    """One column per setup: medians, each round's figure in brackets."""
    flat = [r for results in rounds for r in results]
    grouped = by_setup(flat)
    names = list(grouped)
    lines = [f"| figure | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    for label, pick, digits in INGEST_ROWS:
        cells = [cell([pick(r) for r in grouped[name]], digits) for name in names]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    ratios = ratios_to_first(rounds, lambda r: r.stored_per_s)
    lines.append(
        "| stored / SQLite's in the same round | "
        + " | ".join(cell(ratios.get(name, []), 2) for name in names)
        + " |"
    )
    kept = [" / ".join("yes" if r.sustained else "no" for r in grouped[name]) for name in names]
    lines.append(f"| kept up (bench/run.py's rule) | {' | '.join(kept)} |")
    streams = [
        " / ".join("+".join(map(str, r.streams_each)) for r in grouped[name]) for name in names
    ]
    lines.append(f"| streams open, per controller | {' | '.join(streams)} |")
    return [*lines, "", *problems(flat)]


def streams_table(results: Sequence[ScaleResult]) -> list[str]:
    """Streams held at the production interval, memory per stream, idle cores."""
    grouped = by_setup(results)
    names = list(grouped)
    rows: list[tuple[str, Pick, int]] = [
        ("**streams open** (controllers' gauges, summed)", lambda r: r.streams, 0),
        ("streams the generators opened", lambda r: r.connected, 0),
        ("**KiB per stream** (end RSS - idle RSS, over streams)", lambda r: r.kib_per_stream, 1),
        ("RSS per controller at the end, MiB", lambda r: max(r.rss_end_kib) / 1024, 1),
        ("heartbeats/s stored", lambda r: r.stored_per_s, 0),
        ("controllers' CPU, cores (all)", lambda r: r.controllers_cpu, 3),
        ("PostgreSQL's CPU, cores", lambda r: r.database_cpu, 3),
        ("controllers' CPU before any device (idle), cores (all)", lambda r: r.controllers_idle, 3),
        ("PostgreSQL's CPU before any device (idle), cores", lambda r: r.database_idle, 3),
        ("other processes' CPU, cores (noise)", lambda r: r.other_cpu, 2),
        ("PostgreSQL client connections", lambda r: r.database_connections, 0),
        ("PostgreSQL: commits/s", lambda r: r.commits_per_s, 1),
        ("PostgreSQL: WAL bytes per heartbeat", lambda r: r.wal_bytes_per_heartbeat, 0),
    ]  # fmt: skip
    lines = [f"| figure | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    for label, pick, digits in rows:
        cells = [cell([pick(r) for r in grouped[name]], digits) for name in names]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return [*lines, "", *problems(results)]


@dataclass(frozen=True, slots=True)
class Costs:
    """Cores per 1,000 streams held and per 1,000 heartbeats/s, beyond the idle cores."""

    per_k_streams: float
    per_k_heartbeats: float


def solve_costs(
    busy: tuple[float, float, float], quiet: tuple[float, float, float], idle: float
) -> Costs:
    """Solves cores = idle + a * streams + b * heartbeats/s from two loads, each given
    as (streams, heartbeats/s, cores): one with many heartbeats per stream, one with
    many streams and few heartbeats."""
    (s1, h1, c1), (s2, h2, c2) = busy, quiet
    c1, c2 = c1 - idle, c2 - idle
    det = s1 * h2 - s2 * h1
    if det == 0:
        return Costs(math.nan, math.nan)
    a = (c1 * h2 - c2 * h1) / det
    b = (s1 * c2 - s2 * c1) / det
    return Costs(1000 * a, 1000 * b)


def costs_table(steady: Sequence[ScaleResult], streams: Sequence[ScaleResult]) -> list[str]:
    """Per setup: controllers' and PostgreSQL's cores per 1,000 streams and per 1,000
    heartbeats/s, from the medians of the steady runs and the streams run."""
    busy, quiet = by_setup(steady), by_setup(streams)
    lines = [
        "| setup | controllers idle, cores | controllers per 1,000 streams | controllers per "
        "1,000 heartbeats/s | PostgreSQL idle | PostgreSQL per 1,000 streams | PostgreSQL per "
        "1,000 heartbeats/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in busy:
        if name not in quiet:
            continue
        cells = []
        pairs: tuple[tuple[Pick, Pick], ...] = ((_ctl, _ctl_idle), (_db, _db_idle))
        for cores, idle_of in pairs:
            idle = median([idle_of(r) for r in quiet[name]])
            point = [
                (
                    median([float(r.streams) for r in runs]),
                    median([r.stored_per_s for r in runs]),
                    median([cores(r) for r in runs]),
                )
                for runs in (busy[name], quiet[name])
            ]
            costs = solve_costs(point[0], point[1], 0.0 if math.isnan(idle) else idle)
            cells += [n(idle, 3), n(costs.per_k_streams, 4), n(costs.per_k_heartbeats, 3)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def problems(results: Sequence[ScaleResult]) -> list[str]:
    lines = []
    for r in results:
        if r.errors:
            lines.append(f"- {r.setup} {r.load}: device errors {r.errors}")
        unexpected = {k: v for k, v in r.closed.items() if k != "agent_closed"}
        if unexpected:
            lines.append(f"- {r.setup} {r.load}: streams closed by reason {unexpected}")
    return [*lines, ""] if lines else []


FanPick = Callable[[RoundResult], float | None]


def _last_logged(r: RoundResult) -> float | None:
    return r.dispatched_logged[1] if r.dispatched_logged else None


FANOUT_ROWS: list[tuple[str, FanPick, int]] = [
    ("panels that got their launch", lambda r: r.got, 0),
    ("**median**, s after the start", lambda r: r.percentile(50), 3),
    ("**99th percentile**, s", lambda r: r.percentile(99), 3),
    ("slowest panel, s", lambda r: r.percentile(100), 3),
    ("dispatcher's tick (first `dispatched_at`), s", lambda r: r.first_action, 3),
    ("last `lessons dispatched` log line, s", _last_logged, 3),
    ("last answer read (`lesson_events.received_at`), s", lambda r: r.last_answer, 3),
    ("**every `launched` committed**, s", lambda r: r.all_done, 3),
    ("controllers' CPU from T-0.5 s until then, CPU-s (all)", lambda r: r.server_cpu, 2),
    ("generators' CPU, CPU-s", lambda r: r.generators_cpu, 2),
    ("LaunchLesson messages received (repeats count)", lambda r: r.launches, 0),
    ("seconds to connect every panel", lambda r: r.connect_seconds, 1),
]  # fmt: skip


def _values(rounds: Sequence[RoundResult], pick: FanPick) -> list[float]:
    return [math.nan if (v := pick(r)) is None else float(v) for r in rounds]


def fanout_table(pairs: Sequence[tuple[RoundResult, ReplicaRound]]) -> list[str]:
    """The single controller and the replicas, side by side."""
    single = [s for s, _ in pairs]
    replicas = [r.figures for _, r in pairs]
    names = ("SQLite, 1 controller", f"PostgreSQL, {pairs[0][1].replicas} replicas")
    lines = [f"| figure | {names[0]} | {names[1]} |", "|---|---|---|"]
    for label, pick, digits in FANOUT_ROWS:
        lines.append(
            f"| {label} | {cell(_values(single, pick), digits)} "
            f"| {cell(_values(replicas, pick), digits)} |"
        )
    lines.append(f"| PostgreSQL's CPU, CPU-s | - | {cell([r.database_cpu for _, r in pairs], 2)} |")
    lines.append(
        "| panels per replica; the dispatcher's replica | - | "
        + " / ".join(f"{'+'.join(map(str, r.panels_each))}; r{r.dispatcher}" for _, r in pairs)
        + " |"
    )
    for q, label in ((99, "99th percentile"), (50, "median")):
        ratios = [
            r.figures.percentile(q) / s.percentile(q)
            for s, r in pairs
            if 0 < s.percentile(q) < math.inf
        ]
        lines.append(
            f"| replicas / single controller, {label}, same round | - | {cell(ratios, 2)} |"
        )
    errors = [
        f"{r.target}: {r.errors}" for pair in pairs for r in (pair[0], pair[1].figures) if r.errors
    ]
    return [*lines, "", *([f"Stream errors: {'; '.join(errors)}.", ""] if errors else [])]


def _acked(r: StormRound) -> str:
    return f"{'yes' if r.acked_ok else 'NO'} ({r.acked_devices:,} devices' acks)"


def storm_table(rounds: Sequence[StormRound], devices: int) -> list[str]:
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| streams per replica before the kill | "
        f"{' / '.join('+'.join(map(str, r.streams_before)) for r in rounds)} |",
        f"| devices that lost their stream | {' / '.join(str(r.lost) for r in rounds)} |",
        f"| **seconds from SIGKILL until every one has a Welcome again** | "
        f"{cell([r.back_all_s for r in rounds], 1)} |",
        f"| seconds from SIGKILL until the devices saw their stream end: median; last | "
        f"{cell([r.noticed_median_s for r in rounds], 2)}; "
        f"{cell([r.noticed_max_s for r in rounds], 2)} |",
        f"| seconds until half are back | {cell([r.back_median_s for r in rounds], 1)} |",
        f"| seconds until 90% are back | {cell([r.back_p90_s for r in rounds], 1)} |",
        f"| **seconds from SIGKILL until a survivor holds the dispatcher's lease** | "
        f"{cell([r.lease_taken_s for r in rounds], 1)} |",
        f"| every heartbeat acked to a device in the store (of {devices:,} devices) | "
        f"{' / '.join(_acked(r) for r in rounds)} |",
        "",
        "Attempts that ended from the SIGKILL until every device was back (phase, status, "
        "the controller's hint or the details):",
        "",
    ]
    for index, r in enumerate(rounds, 1):
        for what, count in r.ended.items():
            lines.append(f"- round {index}: {count:,} x {what}")
    return [*lines, ""]
