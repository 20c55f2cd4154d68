"""What the PROXY front costs: one controller behind HAProxy, without and with
``proxy_from``, measured in the same run.

Two arms, both HAProxy in TCP mode (tests/haproxy.py's configuration) in front of
one controller on SQLite, the same simulated devices and heartbeat rate:

- ``plain``: HAProxy passes each connection as it is to the controller's gRPC port.
- ``proxy``: HAProxy connects from 127.0.0.2 with ``send-proxy-v2``; the controller,
  with ``proxy_from=["127.0.0.2"]``, reads each header in its front
  (controller/proxied/front.py), which then copies every byte of every stream to
  and from the gRPC server's loopback port: the cost measured.

Each round runs both arms on fresh processes, the order alternating from round to
round so the machine's drift falls on both alike. Per arm: the devices' streams
opened through HAProxy (bench/loadgen.py's generators, plaintext streams as in
bench/procs.py's lab mode), heartbeats started, ``warmup`` seconds to settle, then a
``seconds`` window over which the controller's CPU (/proc, all threads: the front
runs on its event loop), its heartbeats stored (/metrics), HAProxy's and the
generators' CPU are read; the controller's RSS at the end. Every process it starts
is stopped by its pid, on errors, Ctrl-C and SIGTERM too. Progress goes to stderr,
the markdown record for docs/benchmarks.md to stdout.

Run from the repository: ``.venv/bin/python bench/proxy_front.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import shlex
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.entry import measure
from bench.observe import Scrape, cpu_seconds, machine_busy_seconds, rss_kib, scrape
from bench.procs import (
    CONTROLLER,
    Generator,
    Record,
    RunFailed,
    Target,
    start_generators,
    stop_process,
)
from bench.report import machine, revision
from bench.run import MAX_DEVICES_PER_PROCESS, Load, kept_up, split
from bench.scale_procs import start_replica
from bench.scale_report import cell, n
from tests.haproxy import HaProxy

log = logging.getLogger("bench")

# The address HAProxy connects to the controller from in the proxy arm: loopback, but
# not 127.0.0.1, so that only HAProxy's connections are expected to carry a header.
BALANCER_SOURCE = "127.0.0.2"


@dataclass(frozen=True, slots=True)
class Arm:
    """One way of putting the controller behind HAProxy."""

    name: str
    label: str
    proxy_source: str
    settings: dict[str, str] = field(default_factory=dict)


PLAIN = Arm("plain", "(a) plain TCP", "")
PROXIED = Arm(
    "proxy",
    "(b) send-proxy-v2, the front",
    BALANCER_SOURCE,
    {"proxy_from": json.dumps([BALANCER_SOURCE])},
)
ARMS = (PLAIN, PROXIED)


def orders(rounds: int) -> list[tuple[Arm, ...]]:
    """Each round's arms: plain first, then the front first, and so on."""
    return [ARMS if i % 2 == 0 else tuple(reversed(ARMS)) for i in range(rounds)]


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One arm's figures in one round; CPU in cores (CPU-seconds per second)."""

    arm: str
    round: int
    devices: int
    connected: int
    streams: int
    offered_per_s: float
    stored_per_s: float
    received_per_s: float
    backlog_end: float
    controller_cpu: float
    haproxy_cpu: float
    generators_cpu: float
    other_cpu: float
    rss_idle_kib: int
    rss_end_kib: int
    window_seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    closed: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_per_thousand(self) -> float:
        """The controller's CPU-seconds per 1,000 heartbeats stored."""
        return per_thousand(self.controller_cpu, self.stored_per_s)

    @property
    def sustained(self) -> bool:
        """bench/run.py's rule (kept_up)."""
        return kept_up(self.offered_per_s, self.received_per_s, self.backlog_end)

    @property
    def kib_per_stream(self) -> float:
        """The controller's memory per held stream: (end RSS - idle RSS) / streams."""
        return (self.rss_end_kib - self.rss_idle_kib) / self.streams if self.streams else math.nan


def per_thousand(cores: float, stored_per_s: float) -> float:
    """CPU-seconds per 1,000 heartbeats stored: ``cores`` over the rate, in thousands."""
    return 1000 * cores / stored_per_s if stored_per_s > 0 else math.nan


def ratios(plain: Sequence[float], proxied: Sequence[float]) -> list[float]:
    """The proxy arm's figure over the plain arm's, round by round."""
    return [b / a if a else math.nan for a, b in zip(plain, proxied, strict=True)]


@dataclass(frozen=True, slots=True)
class _Moment:
    page: Scrape
    controller: float
    haproxy: float
    generators: float
    machine: float


async def _moment(target: Target, haproxy_pid: int, generators: list[Generator]) -> _Moment:
    await asyncio.gather(*(g.ask("sample", "sample") for g in generators))
    page = await scrape(target.metrics_port)
    return _Moment(
        page=page,
        controller=cpu_seconds(target.proc.pid),
        haproxy=cpu_seconds(haproxy_pid),
        generators=sum(cpu_seconds(g.pid) for g in generators),
        machine=machine_busy_seconds(),
    )


def _errors(records: list[Record]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for record in records:
        for reason, count in record.get("errors", {}).items():
            merged[reason] = merged.get(reason, 0) + count
    return merged


def _result(
    arm: Arm,
    index: int,
    load: Load,
    window: tuple[_Moment, _Moment],
    connected: int,
    rss: tuple[int, int],
    records: list[Record],
) -> ArmResult:
    a, b = window
    span = b.page.at - a.page.at

    def cores(pick: Callable[[_Moment], float]) -> float:
        return (pick(b) - pick(a)) / span

    def rate(name: str) -> float:
        return (b.page.value(name) - a.page.value(name)) / span

    controller, haproxy = cores(lambda m: m.controller), cores(lambda m: m.haproxy)
    closed = b.page.by_label("schoolfleet_streams_closed_total", "reason")
    generators = cores(lambda m: m.generators)
    return ArmResult(
        arm=arm.name,
        round=index,
        devices=load.devices,
        connected=connected,
        streams=int(b.page.value(CONTROLLER.streams_metric)),
        offered_per_s=load.offered,
        stored_per_s=rate(CONTROLLER.stored_metric),
        received_per_s=rate(CONTROLLER.received_metric),
        backlog_end=b.page.value(CONTROLLER.received_metric)
        - b.page.value(CONTROLLER.stored_metric),
        controller_cpu=controller,
        haproxy_cpu=haproxy,
        generators_cpu=generators,
        other_cpu=max(0.0, cores(lambda m: m.machine) - controller - haproxy - generators),
        rss_idle_kib=rss[0],
        rss_end_kib=rss[1],
        window_seconds=span,
        errors=_errors(records),
        closed={reason: count for reason, count in closed.items() if count},
    )


async def run_arm(arm: Arm, load: Load, index: int, keep: bool = False) -> ArmResult:
    """One arm on fresh processes: a controller on a fresh SQLite file, HAProxy in front
    of it, the generators through HAProxy; one window measured."""
    workdir = Path(tempfile.mkdtemp(prefix=f"schoolfleet-front-{arm.name}-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            url = f"sqlite:{workdir / 'controller.db'}"
            target = await start_replica(workdir, url, arm.settings, "controller")
            stack.push_async_callback(stop_process, target.proc)
            lb = HaProxy(workdir, [("127.0.0.1", target.grpc_port)], proxy_source=arm.proxy_source)
            stack.callback(lb.stop)
            await asyncio.to_thread(lb.start)
            assert lb.proc is not None
            haproxy_pid = lb.proc.pid
            await scrape(target.metrics_port)
            await asyncio.sleep(0.5)
            rss_idle = rss_kib(target.proc.pid)
            # The generators dial the target's address: HAProxy's port, not the controller's.
            through = dataclasses.replace(target, grpc_port=lb.port)
            parts = [(through, first, count) for first, count in split(load.devices, load.procs)]
            generators, ready = await start_generators(
                stack, parts, load.rate, workdir / "loadgen.log", load.connect_timeout
            )
            connected = sum(int(r["connected"]) for r in ready)
            log.info(
                "round %d %s: %d/%d streams open in %.1fs",
                index,
                arm.name,
                connected,
                load.devices,
                max(float(r["seconds"]) for r in ready),
            )
            for gen in generators:
                await gen.send("start")
            await asyncio.sleep(load.warmup)
            start = await _moment(target, haproxy_pid, generators)
            await asyncio.sleep(load.seconds)
            end = await _moment(target, haproxy_pid, generators)
            rss_end = rss_kib(target.proc.pid)
            finals = [f for f in await asyncio.gather(*(g.stop() for g in generators)) if f]
            result = _result(
                arm, index, load, (start, end), connected, (rss_idle, rss_end), [*ready, *finals]
            )
            log.info(
                "round %d %s: stored %.0f/s, controller %.2f cores (%.3f core-s per 1,000), "
                "RSS %.0f MiB, HAProxy %.2f, generators %.2f, other %.2f",
                index,
                arm.name,
                result.stored_per_s,
                result.controller_cpu,
                result.cpu_per_thousand,
                result.rss_end_kib / 1024,
                result.haproxy_cpu,
                result.generators_cpu,
                result.other_cpu,
            )
            return result
    finally:
        if keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def benchmark(load: Load, rounds: int, keep: bool) -> list[list[ArmResult]]:
    """Every round's results, plain arm first in each list whatever the order run."""
    found = []
    for index, order in enumerate(orders(rounds), 1):
        done = {arm.name: await run_arm(arm, load, index, keep) for arm in order}
        found.append([done[arm.name] for arm in ARMS])
    return found


Pick = Callable[[ArmResult], float]

# The table's rows: label, figure, digits.
ROWS: list[tuple[str, Pick, int]] = [
    (
        "**controller CPU per 1,000 heartbeats stored**, core-s",
        lambda r: r.cpu_per_thousand,
        3,
    ),
    ("**heartbeats/s stored**", lambda r: r.stored_per_s, 0),
    ("heartbeats/s received", lambda r: r.received_per_s, 0),
    ("received, not yet stored at the end", lambda r: r.backlog_end, 0),
    ("controller CPU, cores", lambda r: r.controller_cpu, 3),
    ("**controller RSS at the end, MiB**", lambda r: r.rss_end_kib / 1024, 1),
    ("controller RSS before any device, MiB", lambda r: r.rss_idle_kib / 1024, 1),
    ("controller KiB per stream (end RSS - idle RSS, over streams)", lambda r: r.kib_per_stream, 1),
    ("HAProxy's CPU, cores", lambda r: r.haproxy_cpu, 3),
    ("generators' CPU, cores", lambda r: r.generators_cpu, 2),
    ("other processes' CPU, cores (noise)", lambda r: r.other_cpu, 2),
    ("streams open (controller's gauge)", lambda r: r.streams, 0),
]


def table(rounds: Sequence[Sequence[ArmResult]]) -> list[str]:
    """The markdown table: each arm's median in bold and its rounds, and b/a by round
    (the median of the rounds' ratios in bold)."""
    lines = [
        f"| figure | {PLAIN.label} | {PROXIED.label} | b/a, same round |",
        "|---|---|---|---|",
    ]
    for label, pick, digits in ROWS:
        plain = [pick(r[0]) for r in rounds]
        proxied = [pick(r[1]) for r in rounds]
        lines.append(
            f"| {label} | {cell(plain, digits)} | {cell(proxied, digits)} | "
            f"{cell(ratios(plain, proxied), 2)} |"
        )
    kept = [" / ".join("yes" if r[i].sustained else "no" for r in rounds) for i in (0, 1)]
    lines.append(f"| kept up (bench/run.py's rule) | {kept[0]} | {kept[1]} | |")
    return [*lines, ""]


def summary(rounds: Sequence[Sequence[ArmResult]]) -> list[str]:
    """The ratios of the medians, one line each."""
    lines = []
    for label, pick in (
        ("controller CPU per 1,000 heartbeats stored", lambda r: r.cpu_per_thousand),
        ("heartbeats/s stored", lambda r: r.stored_per_s),
        ("controller RSS at the end", lambda r: float(r.rss_end_kib)),
    ):
        a = statistics.median(pick(r[0]) for r in rounds)
        b = statistics.median(pick(r[1]) for r in rounds)
        lines.append(f"- {label}: b/a of the medians **{n(b / a if a else math.nan, 2)}**")
    return [*lines, ""]


def record(
    args: argparse.Namespace,
    argv: list[str],
    rounds: list[list[ArmResult]],
    context: dict[str, str],
) -> str:
    """The markdown record."""
    cmd = shlex.join([".venv/bin/python", "bench/proxy_front.py", *argv])
    load = loads(args)
    errors = {r.arm: r.errors for rs in rounds for r in rs if r.errors}
    lines = [
        f"Machine: {machine().line()} Load average (1 min) {context['load_before']} before, "
        f"{context['load_after']} after.",
        "",
        f"Code at `{revision()}`; one controller on SQLite, default settings, plaintext "
        "device streams (bench/procs.py's lab mode); HAProxy "
        f"(tests/haproxy.py's configuration), (b) from {BALANCER_SOURCE} with "
        f'`send-proxy-v2` to a controller with `proxy_from=["{BALANCER_SOURCE}"]`.',
        "",
        f"Command (took {context['minutes']} min): `{cmd}`",
        "",
        f"{load.devices:,} devices offering {load.offered:,.0f} heartbeats/s "
        f"({load.rate:g}/s each), {args.procs} generator processes, {args.warmup:g} s "
        f"settling, {args.seconds:g} s windows, {len(rounds)} rounds, the arms' order "
        "alternating. Medians in bold, each round's figure in brackets.",
        "",
        *table(rounds),
        *summary(rounds),
    ]
    if errors:
        lines += ["Stream errors:", "", *(f"- {a}: {e}" for a, e in errors.items()), ""]
    return "\n".join(lines) + "\n"


def loads(args: argparse.Namespace) -> Load:
    """The devices' load, the same in both arms."""
    return Load("front", args.devices, args.procs, args.rate, args.warmup, args.seconds)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="bench/proxy_front.py", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of both arms (3)")
    p.add_argument("--devices", type=int, default=2000, help="simulated devices (2000)")
    p.add_argument("--rate", type=float, default=0.5, help="heartbeats/s per device (0.5)")
    p.add_argument("--procs", type=int, default=4, help="generator processes (4)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before each window (5)")
    p.add_argument("--seconds", type=float, default=20.0, help="each window, s (20)")
    p.add_argument("--keep", action="store_true", help="keep each arm's folder")
    p.add_argument("--json", type=Path, help="write every round's figures to this file")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.procs < 1 or args.devices < 1:
        p.error("--rounds, --procs and --devices must be at least 1")
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0:
        p.error("--rate and --seconds must be positive, --warmup not negative")
    if math.ceil(args.devices / args.procs) > MAX_DEVICES_PER_PROCESS:
        p.error(f"{args.devices} devices need more than --procs {args.procs} processes")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the record."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ran = measure(
        lambda: asyncio.run(benchmark(loads(args), args.rounds, args.keep)),
        (RunFailed, AssertionError, OSError),
    )
    if isinstance(ran, int):
        return ran
    rounds = ran.value
    if args.json is not None:
        figures = [[dataclasses.asdict(r) for r in rs] for rs in rounds]
        args.json.write_text(json.dumps({"argv": argv, "rounds": figures}, indent=1))
    context = {
        "load_before": ran.load_before,
        "load_after": ran.load_after,
        "minutes": f"{ran.minutes:.1f}",
    }
    sys.stdout.write(record(args, argv, rounds, context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
