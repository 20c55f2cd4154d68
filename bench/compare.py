"""Two controllers, the same load, the same window: this checkout against another commit.

This machine is shared and its speed drifts by tens of percent within an hour, so
a figure measured at another time is no baseline. This runs the controller of
BASE (a temporary git worktree) and of this checkout alternately under the same
load from the same generators (this checkout's bench/loadgen.py), and reports each
run, the medians and the ratio of each back-to-back pair.

    .venv/bin/python bench/compare.py BASE [--rounds 3] [--devices 1000] [--rate 16000]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script from anywhere: the repository root is where `bench` lives.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import logging
import platform
import shlex
import statistics
import subprocess
import tempfile

from bench.procs import CONTROLLER, ROOT
from bench.run import Load, RunResult, run_once

log = logging.getLogger("compare")


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"compare: git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


async def compare(args: argparse.Namespace, base_tree: Path) -> dict[str, list[RunResult]]:
    load = Load(
        name="compare",
        devices=args.devices,
        procs=args.procs,
        rate=args.rate / args.devices,
        warmup=args.warmup,
        seconds=args.seconds,
    )
    results: dict[str, list[RunResult]] = {"base": [], "head": []}
    trees: list[tuple[str, Path | None]] = [("base", base_tree), ("head", None)]
    for n in range(args.rounds):
        # Alternate which goes first, so a drift of the machine favours neither.
        for label, tree in trees if n % 2 == 0 else list(reversed(trees)):
            log.info("round %d/%d: %s", n + 1, args.rounds, label)
            results[label].append(await run_once(CONTROLLER, load, {}, tree=tree))
    return results


def report(args: argparse.Namespace, base: str, head: str, runs: dict[str, list[RunResult]]) -> str:
    def figures(rows: list[RunResult], pick: str) -> str:
        values = [getattr(r, pick) for r in rows]
        each = " / ".join(f"{v:,.0f}" for v in values)
        return f"{statistics.median(values):,.0f} ({each})"

    def cpu_per_k(rows: list[RunResult]) -> str:
        values = [1000 * r.target_cpu / r.stored_per_s for r in rows if r.stored_per_s]
        return f"{statistics.median(values):.3f}" if values else "-"

    ratios = [
        h.stored_per_s / b.stored_per_s for b, h in zip(runs["base"], runs["head"], strict=True)
    ]
    command = "bench/compare.py " + shlex.join(sys.argv[1:])
    return "\n".join(
        [
            f"Command: `.venv/bin/python {command}`",
            f"Machine: {platform.machine()}, Python {platform.python_version()}; "
            f"{args.devices:,} devices offering {args.rate:,.0f} heartbeats/s, "
            f"{args.seconds:g} s windows after {args.warmup:g} s, {args.rounds} rounds.",
            "",
            f"| figure | base `{base}` | head `{head}` |",
            "|---|---|---|",
            f"| heartbeats/s stored (median; runs) | {figures(runs['base'], 'stored_per_s')} "
            f"| {figures(runs['head'], 'stored_per_s')} |",
            f"| heartbeats/s received | {figures(runs['base'], 'received_per_s')} "
            f"| {figures(runs['head'], 'received_per_s')} |",
            f"| server CPU per 1,000 stored/s, cores | {cpu_per_k(runs['base'])} "
            f"| {cpu_per_k(runs['head'])} |",
            "",
            f"**Head / base: {statistics.median(ratios):.2f}** (pairs: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + ")",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="commit (or any git revision) to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2, help="generator processes")
    parser.add_argument("--rate", type=float, default=16000.0, help="heartbeats/s offered")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    base = _git("rev-parse", "--short", args.base)
    head = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        head += " + uncommitted changes"
    with tempfile.TemporaryDirectory(prefix="schoolfleet-compare-") as tmp:
        tree = Path(tmp) / "base"
        _git("worktree", "add", "--detach", str(tree), base)
        try:
            runs = asyncio.run(compare(args, tree))
        finally:
            _git("worktree", "remove", "--force", str(tree))
    print(report(args, base, head, runs))


if __name__ == "__main__":
    main()
