"""SIGTERM with N device streams: seconds to exit, tracebacks, stream ends recorded.

Starts the real controller (defaults, plaintext: the load generator then costs little
of the machine's 2 cores), opens N Connect streams (Hello, Welcome, then idle) from
client processes of at most 5,000 streams each, SIGTERMs the controller and reports
the seconds until it exited, the controller's own account (``controller stopped
... streams_s=... total_s=...``), tracebacks in its log, and devices still marked
connected in the store.

    .venv/bin/python -m bench.shutdown_streams --streams 10000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.entry import load_average
from bench.report import machine
from bench.restart_storm import store_rows
from common.retry_hint import read_hint
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from tests.procs import Controller, wait_until

ROOT = Path(__file__).resolve().parent.parent
PER_CLIENT = 5000
CONNECT = "/schoolfleet.v1.AgentService/Connect"


async def _client(address: str, prefix: str, count: int) -> None:
    """Opens ``count`` streams, prints "open", holds them until they end."""
    calls = []
    slots = asyncio.Semaphore(100)

    async def one(index: int) -> None:
        async with slots:
            channel = grpc.aio.insecure_channel(
                address, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            connect: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
                CONNECT
            )
            call = connect()
            hello = agent_pb2.Hello(
                device_id=f"{prefix}-{index}",
                kind=fleet_pb2.DEVICE_KIND_PANEL,
                school_id="s1",
                room_id="r1",
            )
            await call.write(agent_pb2.AgentMessage(seq=0, hello=hello).SerializeToString())
            await call.read()
            calls.append((channel, call))

    await asyncio.gather(*(one(i) for i in range(count)))
    print("open", flush=True)

    ends: collections.Counter[str] = collections.Counter()

    async def held(call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        try:
            while isinstance(await call.read(), bytes):
                pass
            ends["ended"] += 1
        except grpc.aio.AioRpcError as exc:
            hint = read_hint(exc.trailing_metadata())
            ends[f"told {hint.reason}" if hint else f"cut {exc.code().name}"] += 1

    await asyncio.gather(*(held(call) for _, call in calls))
    print(json.dumps(ends), flush=True)


def one_run(work: Path, streams: int) -> dict[str, object]:
    """One controller, ``streams`` streams, one SIGTERM."""
    controller = Controller(work).start()
    clients = []
    try:
        count = math.ceil(streams / PER_CLIENT)
        for n in range(count):
            size = min(PER_CLIENT, streams - n * PER_CLIENT)
            clients.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.shutdown_streams",
                        "--client",
                        controller.address,
                        f"c{n}",
                        str(size),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
            )
        for client in clients:
            assert client.stdout is not None
            client.stdout.readline()
        wait_until(lambda: len(store_rows(controller.database)) >= streams, 60, "streams")
        time.sleep(5)
        load = load_average()
        log_from = len(controller.log_text())
        signalled = time.monotonic()
        code = controller.stop(signal.SIGTERM, timeout=120)
        took = time.monotonic() - signalled
        tail = controller.log_text()[log_from:]
        own = re.search(r"streams_cut=(\d+) streams_s=([\d.]+) total_s=([\d.]+)", tail)
        left_up = sum(1 for _, stream in store_rows(controller.database).values() if stream)
        ends: collections.Counter[str] = collections.Counter()
        for client in clients:
            assert client.stdout is not None
            ends.update(json.loads(client.stdout.readline() or "{}"))
        return {
            "exit_s": took,
            "code": code,
            "streams_s": float(own.group(2)) if own else -1.0,
            "total_s": float(own.group(3)) if own else -1.0,
            "cut": int(own.group(1)) if own else -1,
            "devices_saw": dict(ends),
            "tracebacks": tail.count("Traceback"),
            "left_up": left_up,
            "load": load,
        }
    finally:
        for client in clients:
            client.kill()
            client.wait(10)
        controller.stop()


def main() -> None:
    """Runs the benchmark (or, with --client, one client process) and prints its record."""
    if sys.argv[1:2] == ["--client"]:
        address, prefix, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
        asyncio.run(_client(address, prefix, count))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    runs = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="shutdown-") as work:
            runs.append(one_run(Path(work), args.streams))
        print(f"run {n + 1}: {runs[-1]}", file=sys.stderr)
    exits = [float(str(r["exit_s"])) for r in runs]
    print(f"Machine: {machine().line()}")
    print(
        f"Command: `.venv/bin/python -m bench.shutdown_streams --streams {args.streams}"
        f" --runs {args.runs}`"
    )
    print(
        f"Seconds from SIGTERM to exit with {args.streams:,} streams: median "
        f"{statistics.median(exits):.2f} ({' / '.join(f'{e:.2f}' for e in exits)})"
    )
    for n, run in enumerate(runs, 1):
        print(f"- run {n}: {run}")


if __name__ == "__main__":
    main()
