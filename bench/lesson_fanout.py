"""Lesson fan-out benchmark: from a lesson's start to every panel's "launched".

``--panels`` simulated panels (5,000), each alone in its room (50 rooms a school),
hold real gRPC streams to a real controller (plaintext lab mode, ``lesson_lead`` 0,
heartbeats every 30 s), from several worker processes. A schedule with one lesson
per room, all starting at the same instant T, is imported with the real
``schoolctl lessons import``; each panel notes when its LaunchLesson arrives and
answers "launched" at once. Figures: each panel's receive time - T (median, 99th
percentile, maximum, how many got it), when the controller had committed every
"launched", and its CPU meanwhile.

Baseline, measured in the same round: a bare grpc.aio server (bench/fanout_bare.py)
that writes one command of the same size to every stream at T, to the same
generators; the ratio of the two is what the controller adds to this machine's floor.
Each round is a fresh bare server, then a fresh controller with fresh lessons;
``--rounds`` rounds (3), medians across them.

Progress goes to stderr; a markdown block for docs/benchmarks.md goes to stdout.
Run from the repository: ``.venv/bin/python bench/lesson_fanout.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python bench/lesson_fanout.py``) the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import shlex
from collections.abc import Callable, Sequence

from bench.entry import measure
from bench.fanout_lessons import SETTINGS
from bench.fanout_run import FANOUT_BARE, Options, RoundResult, run_round
from bench.procs import CONTROLLER, RunFailed
from bench.report import machine
from bench.run import median

log = logging.getLogger("bench")

AIM_P99_SECONDS = 1.0
Pick = Callable[[RoundResult], float | None]


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.lower(), value


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="bench/lesson_fanout.py",
        description="Time from a lesson's start to every panel's launch, against a bare server.",
    )
    p.add_argument("--panels", type=int, default=5000, help="panels, one per room (5,000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each bare + controller (3)")
    p.add_argument(
        "--per-process", type=int, default=2000, help="panels per generator process at most"
    )
    p.add_argument(
        "--heartbeat-interval", type=float, default=30.0, help="panels' heartbeats, s; 0: none"
    )
    p.add_argument(
        "--start-in", type=float, default=25.0, help="seconds from the import to the start (25)"
    )
    p.add_argument(
        "--deadline", type=float, default=60.0, help="seconds after the start to give up (60)"
    )
    p.add_argument("--connect-timeout", type=float, default=180.0, help="for all panels, s")
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a controller setting, e.g. log_level=warning (repeatable)",
    )
    p.add_argument("--skip-bare", action="store_true", help="controller rounds only")
    p.add_argument("--keep", action="store_true", help="keep each round's folder")
    p.add_argument("--json", type=Path, help="write every round's figures to this file")
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile the controller from T-1s (py-spy raw stacks into DIR; "
        "figures from such runs are not the benchmark's)",
    )
    p.add_argument("--py-spy-seconds", type=float, default=8.0, help="how long to profile")
    args = p.parse_args(argv)
    if args.panels < 1 or args.rounds < 1 or args.per_process < 1:
        p.error("--panels, --rounds and --per-process must be at least 1")
    return args


def _s(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "not reached" if math.isinf(value) else f"{value:,.{digits}f}"


def _cell(results: Sequence[RoundResult], pick: Pick, digits: int = 3) -> str:
    values = [pick(r) for r in results]
    known = [v for v in values if v is not None]
    med = median(known) if len(known) == len(values) else None
    if len(results) == 1:
        return _s(values[0], digits)
    runs = " / ".join(_s(v, digits) for v in values)
    return f"**{_s(med, digits)}** ({runs})"


def _ratio(controller: RoundResult, bare: RoundResult, q: float) -> float:
    c, b = controller.percentile(q), bare.percentile(q)
    return c / b if b > 0 and not math.isinf(b) else math.nan


def _logged(i: int) -> Pick:
    return lambda r: r.dispatched_logged[i] if r.dispatched_logged else None


ROWS: list[tuple[str, Pick, int]] = [
    ("panels that got their launch", lambda r: r.got, 0),
    ("**median**, s after the start", lambda r: r.percentile(50), 3),
    ("**99th percentile**, s", lambda r: r.percentile(99), 3),
    ("slowest panel, s", lambda r: r.percentile(100), 3),
    ("first panel, s", lambda r: r.latencies[0] if r.latencies else None, 3),
    ("first action, s (controller: dispatcher's tick; bare: push)", lambda r: r.first_action, 3),
    ("controller: first `lessons dispatched` log line (a batch), s", _logged(0), 3),
    ("controller: last `lessons dispatched` log line (a batch), s", _logged(1), 3),
    ("last answer read by the server, s", lambda r: r.last_answer, 3),
    ("every answer in (controller: every `launched` committed), s", lambda r: r.all_done, 3),
    ("server CPU from T-0.5 s until then, CPU-s", lambda r: r.server_cpu, 2),
    ("generators' CPU, CPU-s", lambda r: r.generators_cpu, 2),
    ("other processes' CPU (noise), CPU-s", lambda r: r.other_cpu, 2),
    ("LaunchLesson messages received (repeats count)", lambda r: r.launches, 0),
    ("acks (other messages) read by the panels, T-0.5 s until all in", lambda r: r.others, 0),
    ("seconds to connect every panel", lambda r: r.connect_seconds, 1),
]  # fmt: skip
Rounds = list[tuple[RoundResult | None, RoundResult]]


def record(args: argparse.Namespace, argv: list[str], rounds: Rounds, minutes: float) -> str:
    """The markdown block for docs/benchmarks.md."""
    controller = [c for _, c in rounds]
    bare = [b for b, _ in rounds if b is not None]
    cmd = shlex.join([".venv/bin/python", "bench/lesson_fanout.py", *argv])
    procs = math.ceil(args.panels / args.per_process)
    lines = [
        f"Machine: {machine().line()}",
        "",
        f"Command (took {minutes:.1f} min): `{cmd}`",
        "",
        f"{args.panels:,} panels, one per room, over {procs} generator process(es); "
        f"heartbeats every {args.heartbeat_interval:g} s; every lesson starts at the same "
        f"instant T; {len(rounds)} round(s). Medians in bold, each round's figure in brackets.",
        "",
        "Controller settings: "
        + ", ".join(f"{k}={v}" for k, v in {**SETTINGS, **dict(args.set)}.items())
        + "; plaintext device streams (`agent_tls=false`, as in bench/procs.py).",
        "",
        "| figure | bare grpc.aio server | controller |",
        "|---|---|---|",
    ]
    for name, pick, digits in ROWS:
        cells = [_cell(bare, pick, digits) if bare else "-", _cell(controller, pick, digits)]
        if name.startswith("controller:"):
            cells[0] = "-"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    imports = " / ".join(_s(c.import_seconds, 1) for c in controller)
    lines += ["", f"`schoolctl lessons import` of {args.panels:,} rows took {imports} s."]
    if bare:
        for q, label in ((99, "99th percentile"), (50, "median")):
            ratios = [_ratio(c, b, q) for b, c in rounds if b is not None]
            lines.append(
                f"**Controller / bare, {label}: {_s(median(ratios), 1)}** "
                f"(rounds: {', '.join(_s(x, 1) for x in ratios)})."
            )
    p99 = median([c.percentile(99) for c in controller])
    verdict = "met" if p99 < AIM_P99_SECONDS else "missed"
    lines += [
        "",
        f"Aim: 99th percentile under {AIM_P99_SECONDS:g} s for {args.panels:,} panels: "
        f"**{verdict}** (median of the rounds: {_s(p99)} s).",
    ]
    errors = [f"{c.target}: {c.errors}" for pair in rounds for c in pair if c and c.errors]
    if errors:
        lines.append(f"Stream errors: {'; '.join(errors)}.")
    return "\n".join(lines) + "\n"


async def benchmark(args: argparse.Namespace) -> Rounds:
    """Every round, bare server first, then the controller."""
    opts = Options(
        panels=args.panels,
        procs=math.ceil(args.panels / args.per_process),
        heartbeat_interval=args.heartbeat_interval,
        start_in=args.start_in,
        deadline=args.deadline,
        connect_timeout=args.connect_timeout,
        keep=args.keep,
        settings=dict(args.set),
        profile_dir=args.py_spy,
        profile_seconds=args.py_spy_seconds,
    )
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    rounds: Rounds = []
    for index in range(1, args.rounds + 1):
        bare = None if args.skip_bare else await run_round(FANOUT_BARE, opts, index)
        if bare is not None:
            _progress(index, bare)
        controller = await run_round(CONTROLLER, opts, index)
        _progress(index, controller)
        rounds.append((bare, controller))
    return rounds


def _progress(index: int, r: RoundResult) -> None:
    log.info(
        "round %d %s: %d/%d got it; median %s s, p99 %s s, max %s s; all in at %s s; "
        "server CPU %.2f s",
        index,
        r.target,
        r.got,
        r.panels,
        _s(r.percentile(50)),
        _s(r.percentile(99)),
        _s(r.percentile(100)),
        _s(r.all_done),
        r.server_cpu,
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the record."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ran = measure(lambda: asyncio.run(benchmark(args)), (RunFailed,))
    if isinstance(ran, int):
        return ran
    rounds = ran.value
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [[dataclasses.asdict(r) if r else None for r in pair] for pair in rounds], indent=1
            )
        )
    sys.stdout.write(record(args, argv, rounds, ran.minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
