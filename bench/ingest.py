"""Ingest benchmark: heartbeats stored per second and streams held by one controller.

Three scenarios; every figure of the controller comes with this machine's raw
ceiling beside it, a bare grpc.aio server that only counts messages, measured with
the same generators in the same invocation:

- ceiling: ``--devices`` devices (1,000) offering ``--rate`` heartbeats/s in all
  (16,000: more than either server takes); ``--runs`` pairs, bare server and
  controller back to back; medians and the controller/bare ratio.
- aim: the same devices offering ``--aim-rate`` (5,000/s, the issue's aim), bare
  server and controller back to back: does the controller keep up, and at how many
  times the bare server's CPU per heartbeat.
- scale: ``--scale-devices`` streams (10,000) at the real heartbeat interval, over
  generator processes of at most 4,000 devices each (the open-files limit is 20,000
  per process): streams held, RSS per stream, heartbeats stored/s.

Progress goes to stderr; a markdown block for docs/benchmarks.md goes to stdout.
Run from the repository: ``.venv/bin/python bench/ingest.py`` (``make bench``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python bench/ingest.py``) the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import shlex

from bench.entry import measure
from bench.procs import BARE, CONTROLLER, RunFailed
from bench.report import record
from bench.run import MAX_DEVICES_PER_PROCESS, Load, RunResult, run_once

log = logging.getLogger("bench")


SCENARIOS = ("ceiling", "aim", "scale")


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.lower(), value


def _scenarios(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)}; got {text!r}")
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description="Ingest benchmark of the SchoolFleet controller against a bare gRPC server.",
    )
    p.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        help="comma-separated, from: ceiling, aim, scale (all)",
    )
    p.add_argument("--devices", type=int, default=1000, help="ceiling, aim: devices (1,000)")
    p.add_argument(
        "--rate",
        type=float,
        default=16_000,
        help="ceiling: heartbeats/s offered in all, above the bare server's ceiling (16,000)",
    )
    p.add_argument(
        "--aim-rate", type=float, default=5000, help="aim: heartbeats/s offered in all (5,000)"
    )
    p.add_argument("--seconds", type=float, default=20.0, help="ceiling, aim: window, s (20)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before each window (5)")
    p.add_argument("--runs", type=int, default=3, help="ceiling, aim: runs per server (3)")
    p.add_argument("--procs", type=int, default=2, help="ceiling, aim: generator processes (2)")
    p.add_argument("--scale-devices", type=int, default=10_000, help="scale: devices (10,000)")
    p.add_argument(
        "--scale-interval", type=float, default=30.0, help="scale: s between heartbeats (30)"
    )
    p.add_argument("--scale-seconds", type=float, default=30.0, help="scale: window, s (30)")
    p.add_argument(
        "--scale-bare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale: also hold the streams on the bare server, for its memory per stream",
    )
    p.add_argument(
        "--set",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="controller setting, passed as SCHOOLFLEET_CONTROLLER_KEY (repeatable)",
    )
    p.add_argument("--json", type=Path, help="also write every run's figures here")
    p.add_argument("--keep", action="store_true", help="keep each run's folder (db, logs)")
    args = p.parse_args(argv)
    if min(args.devices, args.runs, args.procs, args.scale_devices) < 1:
        p.error("--devices, --runs, --procs and --scale-devices must be at least 1")
    if min(args.rate, args.aim_rate, args.scale_interval) <= 0:
        p.error("--rate, --aim-rate and --scale-interval must be positive")
    if math.ceil(args.devices / args.procs) > MAX_DEVICES_PER_PROCESS:
        p.error(f"at most {MAX_DEVICES_PER_PROCESS} devices per generator process")
    return args


@dataclasses.dataclass
class Results:
    """Every run of one invocation, by scenario."""

    ceiling_bare: list[RunResult] = dataclasses.field(default_factory=list)
    ceiling_controller: list[RunResult] = dataclasses.field(default_factory=list)
    aim_bare: list[RunResult] = dataclasses.field(default_factory=list)
    aim_controller: list[RunResult] = dataclasses.field(default_factory=list)
    scale_controller: RunResult | None = None
    scale_bare: RunResult | None = None

    def runs(self) -> list[RunResult]:
        """Every run, in a flat list."""
        scale = [r for r in (self.scale_controller, self.scale_bare) if r is not None]
        ceiling = [*self.ceiling_bare, *self.ceiling_controller]
        return [*ceiling, *self.aim_bare, *self.aim_controller, *scale]


async def benchmark(args: argparse.Namespace) -> Results:
    """Runs the chosen scenarios."""
    settings = dict(args.settings)
    out = Results()

    def load(name: str, total_rate: float) -> Load:
        return Load(
            name=name,
            devices=args.devices,
            procs=args.procs,
            rate=total_rate / args.devices,
            warmup=args.warmup,
            seconds=args.seconds,
        )

    for name, total_rate, bare, controller in (
        ("ceiling", args.rate, out.ceiling_bare, out.ceiling_controller),
        ("aim", args.aim_rate, out.aim_bare, out.aim_controller),
    ):
        if name not in args.scenarios:
            continue
        for run in range(args.runs):
            # Alternate which goes first, so a drift of the shared machine favours neither.
            order = [(BARE, bare), (CONTROLLER, controller)]
            for kind, results in order if run % 2 == 0 else reversed(order):
                log.info("%s run %d/%d: %s", name, run + 1, args.runs, kind.name)
                results.append(await run_once(kind, load(name, total_rate), settings, args.keep))
    if "scale" in args.scenarios:
        scale = Load(
            name="scale",
            devices=args.scale_devices,
            procs=math.ceil(args.scale_devices / MAX_DEVICES_PER_PROCESS),
            rate=1.0 / args.scale_interval,
            warmup=args.warmup,
            seconds=args.scale_seconds,
        )
        log.info("scale: %s devices on the controller", f"{scale.devices:,}")
        out.scale_controller = await run_once(CONTROLLER, scale, settings, keep=args.keep)
        if args.scale_bare:
            log.info("scale: %s devices on the bare server", f"{scale.devices:,}")
            out.scale_bare = await run_once(BARE, scale, settings, keep=args.keep)
    return out


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the markdown record."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "bench/ingest.py", *sys.argv[1:]])
    ran = measure(lambda: asyncio.run(benchmark(args)), (RunFailed,))
    if isinstance(ran, int):
        return ran
    results = ran.value
    if args.json is not None:
        runs = [dataclasses.asdict(r) for r in results.runs()]
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    print(
        "\n".join(
            record(
                command=command,
                minutes=ran.minutes,
                seconds=args.seconds,
                settings=dict(args.settings),
                ceiling=(results.ceiling_bare, results.ceiling_controller),
                aim=(results.aim_bare, results.aim_controller),
                scale=(results.scale_controller, results.scale_bare),
                interval=args.scale_interval,
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
