"""Agent footprint: RSS, PSS and CPU of an idle agent, and a heartbeat's size on the wire.

A real agent reports to a real controller at the production interval (30 s) for a
few minutes, side by side with a bare Python process that imports the same
libraries and does nothing. CPU is measured over several windows and the median
reported; memory is sampled at the end of each window.

    .venv/bin/python bench/agent_footprint.py [--windows 3] [--window-seconds 60]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script from anywhere: the repository root is where `bench` and `agent` live.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass

import psutil

from agent.report import Reporter, heartbeat_size
from agent.settings import AgentSettings
from bench.observe import cpu_seconds, pss_kib, rss_kib
from bench.procs import CONTROLLER, ROOT, start_target, stop_process
from inventory.model import DeviceKind

# The libraries the agent's reporting path imports, and nothing done with them.
BASELINE = (
    "import grpc, psutil, sqlite3, google.protobuf, pyroute2;"
    "from protos.schoolfleet.v1 import agent_pb2_grpc;"
    "import time; time.sleep(100000)"
)
# gRPC length prefix (5 bytes) + HTTP/2 DATA frame header (9 bytes) per message.
GRPC_FRAMING = 5 + 9


@dataclass
class Sample:
    """One process over one window."""

    cpu_percent: float
    rss_mib: float
    pss_mib: float


def heartbeat_bytes() -> int:
    """Size of a real heartbeat (health, system, network, verdict) as the agent encodes it."""
    reporter = Reporter(AgentSettings("footprint-1", DeviceKind.PANEL, "bench"))
    time.sleep(0.2)
    return heartbeat_size(reporter.collect())


async def measure(windows: int, seconds: float) -> dict[str, list[Sample]]:
    with tempfile.TemporaryDirectory(prefix="schoolfleet-footprint-") as tmp:
        work = Path(tmp)
        controller = await start_target(CONTROLLER, work, {})
        config = work / "agent.toml"
        config.write_text(
            'device_id = "footprint-1"\nkind = "panel"\nschool_id = "bench"\n'
            f'controller = "127.0.0.1:{controller.grpc_port}"\n'
            f'spool_path = "{work / "spool.db"}"\ntls = false\n'
        )
        bin_dir = Path(sys.executable).parent
        procs = {
            "agent": await asyncio.create_subprocess_exec(
                str(bin_dir / "schoolfleet-agent"),
                "--config",
                str(config),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                cwd=ROOT,
            ),
            "bare python, same imports": await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                BASELINE,
                cwd=ROOT,
            ),
        }
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
            for proc in procs.values():
                await stop_process(proc)
            await stop_process(controller.proc)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window-seconds", type=float, default=60.0)
    args = parser.parse_args()
    size = heartbeat_bytes()
    samples = asyncio.run(measure(args.windows, args.window_seconds))
    print(
        f"Command: `.venv/bin/python bench/agent_footprint.py --windows {args.windows} "
        f"--window-seconds {args.window_seconds:g}`; agent heartbeat interval 30 s.\n"
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
        f"\nHeartbeat (health, system, network and verdict, this machine's "
        f"{len(psutil.net_if_stats())} interfaces): {size} bytes of protobuf, about "
        f"{size + GRPC_FRAMING} bytes on the wire with gRPC and HTTP/2 framing (before TLS)."
    )


if __name__ == "__main__":
    main()
