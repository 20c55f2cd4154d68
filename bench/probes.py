"""Probe benchmark (issue 9): full probe cycles over hundreds of namespace targets.

The targets, all in 198.18.0.0/15 (tests/ssh_hosts.py makes the hosts):

- ``sshd``: real sshd hosts, each in its own namespace, with their keys pinned;
- ``slow``: ports on the hosts' bridge that wait ``--slow-delay`` seconds, then relay
  to one of the sshd hosts (so the probe ends with facts, late);
- ``silent``: ports that accept and never speak (the probe ends at the banner timeout);
- ``refused``: the sshd hosts' addresses on a port nothing listens on;
- ``unreachable``: free addresses of the hosts' subnet (no one answers ARP).

The slow and silent ports are served by a second process (bench/probe_lab.py), so
the prober's process CPU is the prober's own.

Variants, each one cycle per run (``Prober.probe_now``: every target at once,
``concurrency`` at a time, until every result is stored), in an order that rotates
from run to run: ``tcp`` (every target, TCP connect only), ``ssh`` (every target, SSH
facts where it has sshd behind it), ``tcp-up`` (the answering targets ten times over,
TCP only: enough probes to time one) and ``ssh-up`` (the sshd hosts, SSH facts).

Progress goes to stderr; a markdown block for docs/benchmarks.md goes to stdout.
Run as root from the repository: ``.venv/bin/python bench/probes.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python bench/probes.py``) the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import logging
import resource
import shlex
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib.metadata import version

from prometheus_client import CollectorRegistry

from bench.entry import measure
from bench.observe import machine_busy_seconds
from bench.probe_lab import GROUPS, VARIANTS, listeners, targets
from bench.report import machine
from bench.run import median
from controller.infra.probe_check import ProbeSettings
from controller.infra.probes import Prober
from inventory.infra import ProbeResult, ProbeTarget
from tests.ssh_hosts import ssh_hosts

log = logging.getLogger("bench")

CITY_APS = 70_000
CITY_SERVERS = 1_800


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="bench/probes.py", description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=100, help="sshd hosts (100)")
    p.add_argument("--slow", type=int, default=100, help="slow relays to the hosts (100)")
    p.add_argument("--slow-delay", type=float, default=1.0, help="their delay, s (1)")
    p.add_argument("--silent", type=int, default=10, help="ports that never speak (10)")
    p.add_argument("--refused", type=int, default=50, help="ports nothing listens on (50)")
    p.add_argument("--unreachable", type=int, default=50, help="addresses nobody has (50)")
    p.add_argument("--concurrency", type=int, default=ProbeSettings().concurrency)
    p.add_argument("--runs", type=int, default=3, help="cycles of every variant (3)")
    args = p.parse_args(argv)
    if min(args.hosts, args.runs, args.concurrency) < 1:
        p.error("--hosts, --runs and --concurrency must be at least 1")
    return args


# -- cycles ----------------------------------------------------------------------------


@dataclass
class Cycle:
    """One full probe cycle of one variant."""

    variant: str
    run: int
    concurrency: int
    targets: int
    seconds: float
    cpu: float  # the prober's process, core-s
    busy: float  # the whole machine, core-s
    up: int
    # Every probe's duration summed: the probe slots the cycle kept busy, in seconds.
    slot_seconds: float
    groups: dict[str, str] = field(default_factory=dict)  # group -> "up/all, median s"
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.targets / self.seconds

    @property
    def slots_busy(self) -> float:
        return self.slot_seconds / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.targets


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _cycle(
    variant: str, run: int, grouped: list[tuple[str, ProbeTarget]], settings: ProbeSettings
) -> Cycle:
    results: list[ProbeResult] = []
    group_of = {t.target_id: g for g, t in grouped}
    with ThreadPoolExecutor(1) as store_calls:
        prober = Prober(list, results.extend, settings, store_calls, CollectorRegistry())
        cpu, busy, started = _cpu(), machine_busy_seconds(), time.monotonic()
        await prober.probe_now([t for _, t in grouped])
        seconds = time.monotonic() - started
        cpu, busy = _cpu() - cpu, machine_busy_seconds() - busy
        await prober.close()
    groups = {}
    for group in GROUPS:
        mine = [r for r in results if group_of[r.target_id] == group]
        if mine:
            up = sum(r.up and not r.reason for r in mine)
            groups[group] = f"{up}/{len(mine)}, {median([r.duration for r in mine]):.2f} s"
    reasons = Counter(f"{group_of[r.target_id]}: {_short(r.reason)}" for r in results if r.reason)
    up, slots = sum(r.up for r in results), sum(r.duration for r in results)
    return Cycle(
        variant,
        run,
        settings.concurrency,
        len(results),
        seconds,
        cpu,
        busy,
        up,
        slots,
        groups,
        dict(reasons),
    )


def _short(reason: str) -> str:
    return reason.partition(":")[0] if reason.startswith("host key") else reason


def benchmark(args: argparse.Namespace) -> list[Cycle]:
    """Sets the targets up once, then every run, every variant."""
    settings = ProbeSettings(concurrency=args.concurrency, private_key_file=None)
    cycles: list[Cycle] = []
    log.info("starting %d ssh hosts", args.hosts)
    with ssh_hosts(args.hosts) as hosts:
        settings = replace(settings, private_key_file=hosts[0].key_file)
        relay_to = [hosts[i % len(hosts)].address for i in range(args.slow)]
        with listeners(hosts[0].gateway, relay_to, args.silent, args.slow_delay) as ports:
            by_variant = targets(hosts, ports, args.slow, args.refused, args.unreachable)
            for run in range(1, args.runs + 1):
                shift = (run - 1) % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    cycle = asyncio.run(_cycle(variant, run, by_variant[variant], settings))
                    log.info(
                        "run %d %s: %d targets in %.2f s (%.0f/s), %d up, cpu %.2f core-s, %s",
                        run,
                        variant,
                        cycle.targets,
                        cycle.seconds,
                        cycle.per_second,
                        cycle.up,
                        cycle.cpu,
                        cycle.groups,
                    )
                    cycles.append(cycle)
    return cycles


# -- the record ------------------------------------------------------------------------


def _cell(cycles: Sequence[Cycle], pick: str, digits: int) -> str:
    values = [float(getattr(c, pick)) for c in cycles]
    if not values:
        return "-"
    each = " / ".join(f"{v:,.{digits}f}" for v in values)
    return f"**{median(values):,.{digits}f}** ({each})"


def record(
    argv: list[str], cycles: Sequence[Cycle], minutes: float, load: tuple[float, float]
) -> str:
    """The markdown block for docs/benchmarks.md."""
    settings = ProbeSettings(concurrency=cycles[0].concurrency if cycles else 0)
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False, timeout=10)
    of = {v: [c for c in cycles if c.variant == v] for v in VARIANTS}
    command = shlex.join([".venv/bin/python", "bench/probes.py", *argv])
    lines = [
        f"Machine: {machine().line()} paramiko {version('paramiko')}, "
        f"{(ssh.stderr or ssh.stdout).strip()}.",
        "",
        f"Command (took {minutes:.1f} min): `{command}`; the machine's load average "
        f"(1 min) {load[0]:.1f} before, {load[1]:.1f} after.",
        "",
        f"Probe settings: concurrency {settings.concurrency}, timeouts connect "
        f"{settings.connect_timeout:g} s, banner {settings.banner_timeout:g} s, auth "
        f"{settings.auth_timeout:g} s, command {settings.command_timeout:g} s (the defaults "
        "but concurrency where `--concurrency` says). Medians in bold, each cycle's figure in "
        "brackets (run 1 / run 2 / ...).",
        "",
        "| figure | " + " | ".join(VARIANTS) + " |",
        "|---|" + "---|" * len(VARIANTS),
    ]
    rows = [
        ("targets", "targets", 0),
        ("**cycle time, s**", "seconds", 2),
        ("**targets per second**", "per_second", 0),
        ("targets up", "up", 0),
        ("probe durations summed, s", "slot_seconds", 1),
        ("probe slots busy on average (summed / cycle time)", "slots_busy", 1),
        ("prober process CPU, core-s", "cpu", 2),
        ("**prober CPU per target, ms**", "cpu_ms", 2),
        ("whole machine busy (prober, sshd, relays), core-s", "busy", 2),
    ]
    for label, pick, digits in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(of[v], pick, digits) for v in VARIANTS))
        lines[-1] += " |"
    lines += [
        "",
        "By group, first cycle of each variant (answered fully / all, median probe time):",
    ]
    lines += ["", "| group | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for group in GROUPS:
        cells = [of[v][0].groups.get(group, "-") if of[v] else "-" for v in VARIANTS]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    lines += ["", "Reasons recorded (first `ssh` cycle):", ""]
    first_ssh = of["ssh"][0].reasons if of["ssh"] else {}
    lines += [f"- {n} x {reason}" for reason, n in sorted(first_ssh.items())]
    if of["tcp-up"] and of["ssh-up"]:
        tcp_ms = median([c.cpu_ms for c in of["tcp-up"]])
        ssh_ms = median([c.cpu_ms for c in of["ssh-up"]])
        city = (CITY_APS * tcp_ms + CITY_SERVERS * ssh_ms) / 1000
        lines += [
            "",
            f"City estimate from the medians: {CITY_APS:,} access points by TCP "
            f"({tcp_ms:.2f} ms each) and {CITY_SERVERS:,} servers with SSH facts "
            f"({ssh_ms:.2f} ms each) cost **{city:.0f} prober core-s per cycle**: "
            f"{100 * city / settings.interval:.0f}% of a core at the default interval of "
            f"{settings.interval:g} s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints the record."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ran = measure(lambda: benchmark(args), (AssertionError,), needs_root=True)
    if isinstance(ran, int):
        return ran
    load = (float(ran.load_before), float(ran.load_after))
    sys.stdout.write(record(argv, ran.value, ran.minutes, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
