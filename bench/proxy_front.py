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

``--tls``: both arms as production runs, agents on mutual TLS. One CA for the run
(``schoolfleet-controller init``), copied to each arm's controller; in each arm every
device is enrolled through the real Enroll call (bench/restart_storm.py's
``enroll_all``) via a second HAProxy on the enrollment port (the same arm's way:
with ``send-proxy-v2`` in (b)) before the controller's idle RSS is read, then run by
bench/storm_devices.py workers, a heartbeat every interval the controller's Welcome
names: ``heartbeat_interval`` is set to 1 / ``--rate`` s.

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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bench.entry import measure
from bench.observe import Scrape, cpu_seconds, machine_busy_seconds, rss_kib, scrape
from bench.procs import (
    CONTROLLER,
    Record,
    RunFailed,
    Target,
    merged_errors,
    start_generators,
    stop_process,
)
from bench.report import machine, revision
from bench.restart_storm import SCHOOL, end_worker, enroll_all, spawn_worker
from bench.run import MAX_DEVICES_PER_PROCESS, Load, kept_up, split
from bench.scale_procs import enroll_port, start_replica
from bench.scale_report import cell, n
from bench.scale_storm import StormLog
from tests.haproxy import HaProxy
from tests.hostile_fleet import seed_token
from tests.procs import init_controller_ca

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
# With --tls: the production default, and the enrollment port on loopback.
TLS_SETTINGS = {"agent_tls": "true", "enroll_listen": "127.0.0.1:0"}


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


@dataclass(frozen=True, slots=True)
class Devices:
    """One arm's simulated devices, however they run: their processes, how many have a
    stream, a sample before each reading, and how to stop them (their errors)."""

    pids: list[int]
    connected: int
    sample: Callable[[], Awaitable[object]]
    finish: Callable[[], Awaitable[dict[str, int]]]


async def _moment(target: Target, haproxy_pids: list[int], devices: Devices) -> _Moment:
    await devices.sample()
    page = await scrape(target.metrics_port)
    return _Moment(
        page=page,
        controller=cpu_seconds(target.proc.pid),
        haproxy=sum(cpu_seconds(pid) for pid in haproxy_pids),
        generators=sum(cpu_seconds(pid) for pid in devices.pids),
        machine=machine_busy_seconds(),
    )


def _result(
    arm: Arm,
    index: int,
    load: Load,
    window: tuple[_Moment, _Moment],
    connected: int,
    rss: tuple[int, int],
    errors: dict[str, int],
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
        errors=errors,
        closed={reason: count for reason, count in closed.items() if count},
    )


async def _plain_devices(
    stack: contextlib.AsyncExitStack, workdir: Path, through: Target, load: Load
) -> Devices:
    """bench/loadgen.py's generators on plaintext streams, heartbeats started."""
    parts = [(through, first, count) for first, count in split(load.devices, load.procs)]
    generators, ready = await start_generators(
        stack, parts, load.rate, workdir / "loadgen.log", load.connect_timeout
    )
    log.info("%d streams open in %.1fs", *_opened(ready))
    for gen in generators:
        await gen.send("start")

    async def finish() -> dict[str, int]:
        finals = [f for f in await asyncio.gather(*(g.stop() for g in generators)) if f]
        return merged_errors([*ready, *finals])

    return Devices(
        [g.pid for g in generators],
        sum(int(r["connected"]) for r in ready),
        lambda: asyncio.gather(*(g.ask("sample", "sample") for g in generators)),
        finish,
    )


def _opened(ready: list[Record]) -> tuple[int, float]:
    return sum(int(r["connected"]) for r in ready), max(float(r["seconds"]) for r in ready)


async def _tls_devices(
    stack: contextlib.AsyncExitStack, workdir: Path, address: str, ca: Path, load: Load
) -> Devices:
    """bench/storm_devices.py workers for the enrolled devices in workdir/devices.json,
    reaching ``address``; returns once every device has its Welcome (its first
    heartbeat sent with it)."""
    rows = json.loads((workdir / "devices.json").read_text())
    events = StormLog()
    workers = []
    for part, (first, count) in enumerate(split(load.devices, load.procs)):
        devices = workdir / f"devices-{part}.json"
        devices.write_text(json.dumps(rows[first : first + count]))
        with (workdir / f"devices-{part}.log").open("w") as stderr:
            worker = spawn_worker(address, ca, devices, events.take, stderr)
        stack.callback(end_worker, worker)
        workers.append(worker)
    started = time.monotonic()
    while not events.connected(load.devices):
        if time.monotonic() - started > load.connect_timeout:
            raise RunFailed(f"not every device had a stream within {load.connect_timeout:g}s")
        if any(w.poll() is not None for w in workers):
            raise RunFailed("a device worker exited; see devices-*.log")
        await asyncio.sleep(0.2)
    log.info("%d streams open in %.1fs", load.devices, time.monotonic() - started)

    async def finish() -> dict[str, int]:
        for worker in workers:
            await asyncio.to_thread(end_worker, worker)
        return {f"{p} Welcome, {c}, {w}": k for (p, c, w), k in events.ended_since(0).items()}

    return Devices([w.pid for w in workers], load.devices, lambda: asyncio.sleep(0), finish)


async def _enroll(
    stack: contextlib.AsyncExitStack, workdir: Path, target: Target, arm: Arm, load: Load, ca: Path
) -> None:
    """Every device enrolled through a second HAProxy on the enrollment port, the arm's
    way; their keys and certificates in workdir/devices.json."""
    folder = workdir / "enroll-lb"
    folder.mkdir()
    enroll_lb = HaProxy(folder, [("127.0.0.1", enroll_port(target))], proxy_source=arm.proxy_source)
    stack.callback(enroll_lb.stop)
    await asyncio.to_thread(enroll_lb.start)
    secret = await asyncio.to_thread(
        seed_token, workdir / "controller.db", SCHOOL, uses=load.devices
    )
    started = time.monotonic()
    rows = await asyncio.to_thread(
        lambda: enroll_all(enroll_lb.port, ca.read_bytes(), secret, load.devices)
    )
    log.info("enrolled %d devices in %.1fs", len(rows), time.monotonic() - started)
    (workdir / "devices.json").write_text(json.dumps(rows))


async def run_arm(
    arm: Arm, load: Load, index: int, keep: bool = False, ca_data: Path | None = None
) -> ArmResult:
    """One arm on fresh processes: a controller on a fresh SQLite file, HAProxy in front
    of it, the devices through HAProxy; one window measured. ``ca_data``: mutual TLS,
    the controller given that CA (a data folder from ``schoolfleet-controller init``)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"schoolfleet-front-{arm.name}-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            url = f"sqlite:{workdir / 'controller.db'}"
            settings = dict(arm.settings)
            if ca_data is not None:
                shutil.copytree(ca_data, workdir / "controller" / "data")
                interval = str(round(1 / load.rate))
                settings |= {**TLS_SETTINGS, "heartbeat_interval": interval}
            target = await start_replica(workdir, url, settings, "controller")
            stack.push_async_callback(stop_process, target.proc)
            lb = HaProxy(workdir, [("127.0.0.1", target.grpc_port)], proxy_source=arm.proxy_source)
            stack.callback(lb.stop)
            await asyncio.to_thread(lb.start)
            assert lb.proc is not None
            haproxy_pids = [lb.proc.pid]
            await scrape(target.metrics_port)
            ca = None if ca_data is None else ca_data / "pki" / "ca.crt"
            if ca is not None:
                await _enroll(stack, workdir, target, arm, load, ca)
            await asyncio.sleep(0.5)
            rss_idle = rss_kib(target.proc.pid)
            log.info("round %d %s: controller up, %.0f MiB", index, arm.name, rss_idle / 1024)
            if ca is None:
                # The generators dial the target's address: HAProxy's port, not the controller's.
                through = dataclasses.replace(target, grpc_port=lb.port)
                devices = await _plain_devices(stack, workdir, through, load)
            else:
                devices = await _tls_devices(stack, workdir, lb.address, ca, load)
            await asyncio.sleep(load.warmup)
            start = await _moment(target, haproxy_pids, devices)
            await asyncio.sleep(load.seconds)
            end = await _moment(target, haproxy_pids, devices)
            rss_end = rss_kib(target.proc.pid)
            errors = await devices.finish()
            result = _result(
                arm, index, load, (start, end), devices.connected, (rss_idle, rss_end), errors
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


async def benchmark(
    load: Load, rounds: int, keep: bool, tls: bool = False
) -> list[list[ArmResult]]:
    """Every round's results, plain arm first in each list whatever the order run.
    ``tls``: one CA made for the run, given to every arm's controller."""
    ca_data = Path(tempfile.mkdtemp(prefix="schoolfleet-front-ca-")) / "data" if tls else None
    try:
        if ca_data is not None:
            await asyncio.to_thread(init_controller_ca, ca_data)
        found = []
        for index, order in enumerate(orders(rounds), 1):
            done = {arm.name: await run_arm(arm, load, index, keep, ca_data) for arm in order}
            found.append([done[arm.name] for arm in ARMS])
        return found
    finally:
        if ca_data is not None:
            shutil.rmtree(ca_data.parent, ignore_errors=True)


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
    errors = [(r.arm, r.round, r.errors) for rs in rounds for r in rs if r.errors]
    if args.tls:
        streams = (
            "mutual-TLS device streams (agent_tls on, `heartbeat_interval` "
            f"{round(1 / args.rate)} s), each device enrolled through Enroll in each arm; "
            "two HAProxy instances, the agents' port and the enrollment port (their CPU "
            "summed)"
        )
        devices = "mutual-TLS devices (bench/storm_devices.py)"
    else:
        streams = "plaintext device streams (bench/procs.py's lab mode); HAProxy"
        devices = "devices"
    lines = [
        f"Machine: {machine().line()} Load average (1 min) {context['load_before']} before, "
        f"{context['load_after']} after.",
        "",
        f"Code at `{revision()}`; one controller on SQLite, default settings, {streams} "
        f"(tests/haproxy.py's configuration), (b) from {BALANCER_SOURCE} with "
        f'`send-proxy-v2` to a controller with `proxy_from=["{BALANCER_SOURCE}"]`.',
        "",
        f"Command (took {context['minutes']} min): `{cmd}`",
        "",
        f"{load.devices:,} {devices} offering {load.offered:,.0f} heartbeats/s "
        f"({load.rate:g}/s each), {args.procs} generator processes, {args.warmup:g} s "
        f"settling, {args.seconds:g} s windows, {len(rounds)} rounds, the arms' order "
        "alternating. Medians in bold, each round's figure in brackets.",
        "",
        *table(rounds),
        *summary(rounds),
    ]
    if errors:
        lines += ["Stream errors:", "", *(f"- {a}, round {i}: {e}" for a, i, e in errors), ""]
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
    p.add_argument(
        "--tls",
        action="store_true",
        help="mutual-TLS device streams, enrolled through Enroll (--rate: 1 / a whole number)",
    )
    p.add_argument("--keep", action="store_true", help="keep each arm's folder")
    p.add_argument("--json", type=Path, help="write every round's figures to this file")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.procs < 1 or args.devices < 1:
        p.error("--rounds, --procs and --devices must be at least 1")
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0:
        p.error("--rate and --seconds must be positive, --warmup not negative")
    if math.ceil(args.devices / args.procs) > MAX_DEVICES_PER_PROCESS:
        p.error(f"{args.devices} devices need more than --procs {args.procs} processes")
    # With TLS the devices beat at the interval the controller's Welcome names, whole seconds.
    if args.tls and not math.isclose(1 / args.rate, round(1 / args.rate)):
        p.error("with --tls, --rate must be 1 / a whole number of seconds (0.5, 0.25, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the record."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ran = measure(
        lambda: asyncio.run(benchmark(loads(args), args.rounds, args.keep, args.tls)),
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
