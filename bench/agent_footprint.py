"""Agent footprint: RSS, PSS and CPU of an idle agent, and a heartbeat's size on the wire.

A real agent reports to a real controller at the production interval (30 s) for a
few minutes, side by side with bare Python processes that import libraries and do
nothing (the baselines, measured in the same run). Like a panel, the agent watches
a kiosk program (a stand-in process the benchmark starts). CPU is measured over
several windows and the median reported; memory is sampled at the end of each window.

``--compare-tree DIR`` runs a second agent from another source tree (an earlier
commit unpacked with ``git archive``) beside it, on the same controller and windows.
``--links N`` runs everything inside a network namespace with N software links
besides loopback (a shared host's clutter), created and deleted by the benchmark.

    .venv/bin/python bench/agent_footprint.py [--windows 3] [--window-seconds 60]
        [--compare-tree DIR] [--links 55]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script from anywhere: the repository root is where `bench` and `agent` live.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

from agent.link_messages import heartbeat_size
from agent.report import Reporter
from agent.settings import AgentSettings
from bench.observe import cpu_seconds, pss_kib, rss_kib
from bench.procs import CONTROLLER, ROOT, start_target, stop_process
from inventory.model import DeviceKind

_SLEEP = "import time; time.sleep(100000)"
# The libraries every agent loads (pyroute2 only where there is Wi-Fi), and nothing done.
BASELINE = (
    "import grpc, psutil, sqlite3, google.protobuf;"
    "from protos.schoolfleet.v1 import agent_pb2_grpc;" + _SLEEP
)
# The baseline earlier records used: the same, and the whole pyroute2 package.
BASELINE_PYROUTE2 = (
    "import grpc, psutil, sqlite3, google.protobuf, pyroute2;"
    "from protos.schoolfleet.v1 import agent_pb2_grpc;" + _SLEEP
)
# Set in the run inside the namespace --links made.
_IN_NAMESPACE = "SCHOOLFLEET_BENCH_LINKS"
# gRPC length prefix (5 bytes) + HTTP/2 DATA frame header (9 bytes) per message.
GRPC_FRAMING = 5 + 9


@dataclass
class Sample:
    """One process over one window."""

    cpu_percent: float
    rss_mib: float
    pss_mib: float


def heartbeat_bytes() -> tuple[int, int]:
    """(size of a real full heartbeat as the agent encodes it, interfaces it saw)."""
    reporter = Reporter(AgentSettings("footprint-1", DeviceKind.PANEL, "bench"))
    time.sleep(0.2)
    report = reporter.collect()
    return heartbeat_size(report), len(report.network.interfaces) if report.network else 0


def tree_heartbeat_bytes(tree: Path) -> str:
    """What heartbeat_bytes says when run from another source tree (its own code)."""
    code = (
        "import time; from agent.report import Reporter\n"
        # heartbeat_size moved from agent/report.py to the link's side.
        "try: from agent.link_messages import heartbeat_size\n"
        "except ImportError: from agent.report import heartbeat_size\n"
        "from agent.settings import AgentSettings; from inventory.model import DeviceKind;"
        "r = Reporter(AgentSettings('footprint-2', DeviceKind.PANEL, 'bench'));"
        "time.sleep(0.2); print(heartbeat_size(r.collect()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or f"not measured: {done.stderr.strip()[-200:]}"


def _agent_config(work: Path, name: str, port: int, kiosk: Path) -> Path:
    config = work / f"{name}.toml"
    config.write_text(
        f'device_id = "{name}"\nkind = "panel"\nschool_id = "bench"\n'
        f'controller = "127.0.0.1:{port}"\n'
        f'spool_path = "{work / name}.db"\ntls = false\n'
        f'kiosk_program = "{kiosk}"\n'
    )
    return config


async def measure(windows: int, seconds: float, tree: Path | None) -> dict[str, list[Sample]]:
    with tempfile.TemporaryDirectory(prefix="schoolfleet-footprint-") as tmp:
        work = Path(tmp)
        # The panel's kiosk, as a process of a name no other process has.
        kiosk = work / f"sf-kiosk-{uuid.uuid4().hex[:8]}"
        shutil.copy("/bin/sleep", kiosk)
        # A data folder of its own: serve locks it, and other runs may be going on.
        controller = await start_target(CONTROLLER, work, {"data_dir": str(work / "data")})
        bin_dir = Path(sys.executable).parent
        quiet = asyncio.subprocess.DEVNULL
        procs = {
            "kiosk stand-in": await asyncio.create_subprocess_exec(str(kiosk), "100000"),
            "agent": await asyncio.create_subprocess_exec(
                str(bin_dir / "schoolfleet-agent"),
                "--config",
                str(_agent_config(work, "footprint-1", controller.grpc_port, kiosk)),
                cwd=ROOT,
                stdout=quiet,
                stderr=quiet,
            ),
        }
        if tree is not None:
            config = _agent_config(work, "footprint-2", controller.grpc_port, kiosk)
            procs[f"agent of {tree.name}"] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import sys; sys.argv[0] = 'schoolfleet-agent';from agent.main import run; run()",
                "--config",
                str(config),
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree)},
                stdout=quiet,
                stderr=quiet,
            )
        procs["bare python, agent's libraries"] = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BASELINE, cwd=ROOT
        )
        procs["bare python, same + pyroute2"] = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BASELINE_PYROUTE2, cwd=ROOT
        )
        kiosk_proc = procs.pop("kiosk stand-in")
        samples: dict[str, list[Sample]] = {name: [] for name in procs}
        try:
            await asyncio.sleep(10)  # start-up and the first heartbeat are not idling
            for _ in range(windows):
                before = {n: cpu_seconds(p.pid) for n, p in procs.items()}
                started = time.monotonic()
                await asyncio.sleep(seconds)
                elapsed = time.monotonic() - started
                for name, proc in procs.items():
                    used = cpu_seconds(proc.pid) - before[name]
                    samples[name].append(
                        Sample(
                            100 * used / elapsed, rss_kib(proc.pid) / 1024, pss_kib(proc.pid) / 1024
                        )
                    )
        finally:
            for proc in [*procs.values(), kiosk_proc]:
                await stop_process(proc)
            await stop_process(controller.proc)
    return samples


def _in_namespace(links: int, argv: list[str]) -> int:
    """Runs this benchmark again inside a new namespace with ``links`` software links
    besides loopback (veth pairs, half of them up with an address); deletes it after."""
    ns = f"sf-bench-{uuid.uuid4().hex[:8]}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip("link", "set", "lo", "up")
        for n in range(links // 2):
            ip("link", "add", f"bx{n}a", "type", "veth", "peer", "name", f"bx{n}b")
            if n % 2:
                ip("addr", "add", f"198.18.{100 + n}.1/24", "dev", f"bx{n}a")
                ip("link", "set", f"bx{n}a", "up")
        # The uplink: the default route goes out of the first link.
        ip("addr", "add", "198.18.99.1/24", "dev", "bx0a")
        ip("link", "set", "bx0a", "up")
        ip("route", "add", "default", "via", "198.18.99.2", "dev", "bx0a")
        return subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, __file__, *argv], check=False
        ).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window-seconds", type=float, default=60.0)
    parser.add_argument("--compare-tree", type=Path, help="another source tree's agent beside")
    parser.add_argument("--links", type=int, default=0, help="run in a namespace with N links")
    args = parser.parse_args()
    if args.links and not os.environ.get(_IN_NAMESPACE):
        os.environ[_IN_NAMESPACE] = str(args.links)
        sys.exit(_in_namespace(args.links, sys.argv[1:]))
    size, interfaces = heartbeat_bytes()
    before = tree_heartbeat_bytes(args.compare_tree) if args.compare_tree else None
    samples = asyncio.run(measure(args.windows, args.window_seconds, args.compare_tree))
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.\n"
        f"Command: `.venv/bin/python bench/agent_footprint.py --windows {args.windows} "
        f"--window-seconds {args.window_seconds:g}"
        + (f" --compare-tree {args.compare_tree}" if args.compare_tree else "")
        + (f" --links {args.links}" if args.links else "")
        + "`; agent heartbeat interval 30 s.\n"
    )
    print("| process | CPU, % of one core (median; windows) | RSS, MiB | PSS, MiB |")
    print("|---|---|---|---|")
    for name, rows in samples.items():
        cpu = [r.cpu_percent for r in rows]
        print(
            f"| {name} | {statistics.median(cpu):.3f} ({' / '.join(f'{c:.3f}' for c in cpu)}) "
            f"| {statistics.median(r.rss_mib for r in rows):.1f} "
            f"| {statistics.median(r.pss_mib for r in rows):.1f} |"
        )
    print(
        f"\nFull heartbeat (health, system, network and verdict; {interfaces} interfaces "
        f"seen): {size} bytes of protobuf, about {size + GRPC_FRAMING} bytes on the wire "
        "with gRPC and HTTP/2 framing (before TLS)."
    )
    if before is not None:
        print(f"The same from {args.compare_tree}'s code: {before} bytes of protobuf.")


if __name__ == "__main__":
    main()
