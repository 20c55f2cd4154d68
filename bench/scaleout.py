"""Scale-out benchmark: controller replicas on one PostgreSQL database, against one
controller on SQLite measured in the same run.

Scenarios (``--scenarios``, all by default):

- ``ingest``: heartbeats stored per second by one SQLite controller and by 1, 2 and 3
  replicas on one PostgreSQL database, at two loads: *ceiling* (more offered than
  this machine can take) and *steady* (a load every setup keeps up with, each
  heartbeat acked alone as at the production interval). Rounds of the four setups,
  their order reversed every other round; CPU of the controllers, of PostgreSQL's
  processes and of the generators, per 1,000 heartbeats/s.
- ``streams``: many devices at the production interval (30 s): streams held per
  replica, memory per stream, and the cores used before any device connected.
  With ``steady`` it gives each setup's cores per 1,000 streams and per 1,000
  heartbeats/s (bench/scale_report.py ``solve_costs``).
- ``fanout``: the lesson fan-out to ``--panels`` panels spread over three replicas
  (bench/scale_fanout.py), each round beside bench/lesson_fanout.py's single
  controller on SQLite.
- ``storm``: ``--storm-devices`` mutual-TLS devices behind HAProxy on three replicas,
  the replica holding the lesson dispatcher's lease killed with SIGKILL
  (bench/scale_storm.py): until every device is back, and the lease taken over.

PostgreSQL is a throwaway cluster (tests/pg_cluster.py) with fsync,
synchronous_commit and full_page_writes on (``--pg-fast``: off, as in the tests).
Everything it starts is stopped by pid, on errors and Ctrl-C too. Progress goes to
stderr, the markdown record for docs/benchmarks.md to stdout.

Run from the repository: ``.venv/bin/python bench/scaleout.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import shlex
from typing import Any

import psycopg

from bench.entry import measure
from bench.fanout_run import Options, RoundResult, run_round
from bench.procs import CONTROLLER, RunFailed
from bench.report import machine, revision
from bench.run import MAX_DEVICES_PER_PROCESS, Load
from bench.scale_fanout import ReplicaRound, replica_round
from bench.scale_ingest import SETUPS, ScaleResult, run_setup
from bench.scale_pg import DURABLE, BenchPg, on_bench_server
from bench.scale_report import costs_table, fanout_table, ingest_table, storm_table, streams_table
from bench.scale_storm import StormRound, storm_rounds

log = logging.getLogger("bench")

SCENARIOS = ("ingest", "streams", "fanout", "storm")


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.lower(), value


def _scenarios(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; known: {SCENARIOS}")
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="bench/scaleout.py", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    p.add_argument("--scenarios", type=_scenarios, default=list(SCENARIOS), help="comma list")
    p.add_argument("--runs", type=int, default=3, help="rounds of the ingest setups (3)")
    p.add_argument(
        "--procs", type=int, default=6, help="generator processes (6: 1, 2, 3 divide it)"
    )
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before each window")
    p.add_argument("--seconds", type=float, default=20.0, help="each ingest window, s")
    p.add_argument("--ceiling-devices", type=int, default=1200)
    p.add_argument("--ceiling-rate", type=float, default=12.0, help="heartbeats/s per device")
    p.add_argument("--steady-devices", type=int, default=2400)
    p.add_argument("--steady-rate", type=float, default=0.5, help="heartbeats/s per device")
    p.add_argument("--streams-devices", type=int, default=9000)
    p.add_argument("--streams-seconds", type=float, default=30.0)
    p.add_argument("--panels", type=int, default=5000)
    p.add_argument("--fanout-rounds", type=int, default=3)
    p.add_argument("--storm-devices", type=int, default=3000)
    p.add_argument("--storm-rounds", type=int, default=3)
    p.add_argument("--pg-fast", action="store_true", help="fsync etc. off, as in the tests")
    p.add_argument(
        "--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
        help="a controller setting for the ingest and fan-out replicas (repeatable)",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep each run's folder")
    p.add_argument("--json", type=Path, help="write every run's figures to this file")
    args = p.parse_args(argv)
    if args.runs < 1 or args.procs < 1 or args.fanout_rounds < 1 or args.storm_rounds < 1:
        p.error("--runs, --procs, --fanout-rounds and --storm-rounds must be at least 1")
    for devices in (args.ceiling_devices, args.steady_devices, args.streams_devices):
        if math.ceil(devices / args.procs) > MAX_DEVICES_PER_PROCESS:
            p.error(f"{devices} devices need more than --procs {args.procs} processes")
    return args


@dataclasses.dataclass
class Measured:
    """Everything one invocation measured."""

    ceiling: list[list[ScaleResult]] = dataclasses.field(default_factory=list)
    steady: list[list[ScaleResult]] = dataclasses.field(default_factory=list)
    streams: list[ScaleResult] = dataclasses.field(default_factory=list)
    fanout: list[tuple[RoundResult, ReplicaRound]] = dataclasses.field(default_factory=list)
    storm: list[StormRound] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)


def loads(args: argparse.Namespace) -> dict[str, Load]:
    """The three loads, by scenario name."""
    return {
        "ceiling": Load(
            "ceiling",
            args.ceiling_devices,
            args.procs,
            args.ceiling_rate,
            args.warmup,
            args.seconds,
        ),
        "steady": Load(
            "steady", args.steady_devices, args.procs, args.steady_rate, args.warmup, args.seconds
        ),
        "streams": Load(
            "streams", args.streams_devices, args.procs, 1 / 30, args.warmup, args.streams_seconds
        ),
    }


async def benchmark(args: argparse.Namespace, pg: BenchPg) -> Measured:
    """Every scenario asked for, in turn; one that fails is noted and the rest go on."""
    found = Measured()
    steps = {"ingest": _ingest, "streams": _streams, "fanout": _fanout, "storm": _storm}
    for name in args.scenarios:
        try:
            await steps[name](args, pg, found)
        # A scenario's processes are all stopped by now; what the others measure stands.
        except (RunFailed, AssertionError, OSError, psycopg.Error) as exc:
            log.exception("%s failed", name)
            found.failures.append(f"{name}: {exc}")
    return found


async def _ingest(args: argparse.Namespace, pg: BenchPg, found: Measured) -> None:
    settings = dict(args.set)
    for index in range(args.runs):
        # Reversed every other round: the machine's drift falls on every setup alike.
        order = SETUPS if index % 2 == 0 else tuple(reversed(SETUPS))
        for name in ("steady", "ceiling"):
            load = loads(args)[name]
            results = [await run_setup(s, load, pg, settings, keep=args.keep) for s in order]
            getattr(found, name).append(results)


async def _streams(args: argparse.Namespace, pg: BenchPg, found: Measured) -> None:
    load = loads(args)["streams"]
    for setup in SETUPS:
        found.streams.append(
            await run_setup(setup, load, pg, dict(args.set), idle_seconds=5.0, keep=args.keep)
        )


async def _fanout(args: argparse.Namespace, pg: BenchPg, found: Measured) -> None:
    opts = Options(
        panels=args.panels,
        procs=3,
        heartbeat_interval=30.0,
        start_in=25.0,
        deadline=60.0,
        connect_timeout=180.0,
        keep=args.keep,
        settings=dict(args.set),
    )
    for index in range(1, args.fanout_rounds + 1):
        single = await run_round(CONTROLLER, opts, index)
        replicas = await replica_round(pg, opts, 3)
        log.info(
            "fan-out round %d: p99 %.3f s (1 controller) / %.3f s (3 replicas)",
            index,
            single.percentile(99),
            replicas.figures.percentile(99),
        )
        found.fanout.append((single, replicas))


async def _storm(args: argparse.Namespace, pg: BenchPg, found: Measured) -> None:
    found.storm = await storm_rounds(pg, args.storm_devices, args.storm_rounds, args.keep)


def record(
    args: argparse.Namespace,
    argv: list[str],
    found: Measured,
    context: dict[str, str],
) -> str:
    """The markdown record."""
    cmd = shlex.join([".venv/bin/python", "bench/scaleout.py", *argv])
    pg_mode = ", ".join(f"{k}={'off' if args.pg_fast else v}" for k, v in DURABLE.items())
    shown = loads(args)
    lines = [
        f"Machine: {machine().line()} PostgreSQL {context['pg_version']} (Debian's, a "
        f"throwaway cluster on this machine's disk; {pg_mode}). Load average (1 min) "
        f"{context['load_before']} before, {context['load_after']} after.",
        "",
        f"Code at `{revision()}`; controller settings: "
        + (", ".join(f"{k}={v}" for k, v in args.set) or "defaults")
        + "; plaintext device streams except in the storm (bench/procs.py's lab mode).",
        "",
        f"Command (took {context['minutes']} min): `{cmd}`",
        "",
    ]
    for name in ("ceiling", "steady"):
        rounds = getattr(found, name)
        if rounds:
            load = shown[name]
            lines += [
                f"### Ingest, {name}: {load.devices:,} devices offering {load.offered:,.0f} "
                f"heartbeats/s ({load.rate:g}/s each), {args.procs} generator processes, "
                f"{args.seconds:g} s windows, {len(rounds)} rounds",
                "",
                "Medians in bold, each round's figure in brackets.",
                "",
                *ingest_table(rounds),
            ]
    if found.streams:
        load = shown["streams"]
        lines += [
            f"### Streams: {load.devices:,} devices, one heartbeat every 30 s each, "
            f"{args.procs} generator processes, {args.streams_seconds:g} s window, one run",
            "",
            *streams_table(found.streams),
        ]
    if found.streams and found.steady:
        lines += [
            "### Costs: cores = idle + a * streams + b * heartbeats/s",
            "",
            "Solved per setup from the steady runs' medians and the streams run "
            "(bench/scale_report.py `solve_costs`); the idle cores measured for 5 s after "
            "start, before any device.",
            "",
            *costs_table([r for rs in found.steady for r in rs], found.streams),
            "",
        ]
    if found.fanout:
        lines += [
            f"### Lesson fan-out: {args.panels:,} panels, one per room, every lesson at the "
            f"same instant T, {len(found.fanout)} rounds",
            "",
            "Each round: bench/lesson_fanout.py's single controller on SQLite (3 panel "
            "processes), then three replicas on a fresh PostgreSQL database (one panel "
            "process per replica, connected to it). Medians in bold, rounds in brackets.",
            "",
            *fanout_table(found.fanout),
        ]
    if found.storm:
        lines += [
            f"### Reconnect storm: {args.storm_devices:,} mutual-TLS devices behind HAProxy "
            f"on three replicas, the dispatcher's replica killed with SIGKILL, "
            f"{len(found.storm)} rounds",
            "",
            *storm_table(found.storm, args.storm_devices),
        ]
    if found.failures:
        lines += ["Failed:", "", *(f"- {f}" for f in found.failures), ""]
    return "\n".join(lines) + "\n"


def _asdict(found: Measured) -> dict[str, Any]:
    return {
        "ceiling": [[dataclasses.asdict(r) for r in rs] for rs in found.ceiling],
        "steady": [[dataclasses.asdict(r) for r in rs] for rs in found.steady],
        "streams": [dataclasses.asdict(r) for r in found.streams],
        "fanout": [[dataclasses.asdict(s), dataclasses.asdict(r)] for s, r in found.fanout],
        "storm": [dataclasses.asdict(r) for r in found.storm],
        "failures": found.failures,
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the record."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # The controllers' migration lines when the template is made are not progress.
    logging.getLogger("controller").setLevel(logging.WARNING)
    ran = measure(
        lambda: on_bench_server(not args.pg_fast, lambda pg: asyncio.run(benchmark(args, pg))),
        (RunFailed,),
    )
    if isinstance(ran, int):
        return ran
    found, context = ran.value
    if args.json is not None:
        args.json.write_text(json.dumps(_asdict(found), indent=1))
    sys.stdout.write(record(args, argv, found, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
