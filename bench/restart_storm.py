"""Restart storm: N mutual-TLS devices, the controller SIGTERMed and started again.

Initialises a controller's CA, starts the real controller with mutual TLS on a fixed
port, enrolls N devices through the real Enroll call, and runs them in worker
processes (bench/storm_devices.py: one TCP connection each, the agent's reconnect
rule). Once all are connected it measures, each run: the controller's memory per
stream, the seconds from SIGTERM to exit with N streams, tracebacks in its log,
streams left marked up in the store after exit; then starts it again on the same
port and measures how long after it listens every device has its Welcome again,
and every attempt that failed, by status and by whether the controller chose it
(a retry hint in the trailers). At the end every device's highest acked heartbeat
is checked against the store.

    .venv/bin/python -m bench.restart_storm --devices 3000 --runs 3
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import math
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc

from bench.entry import load_average
from bench.report import machine
from protos.schoolfleet.v1 import agent_pb2
from tests.hostile_fleet import seed_token
from tests.hostile_pki import csr_pem, key_pem, new_key
from tests.procs import Controller, free_port, init_controller_ca, tls_env, wait_until

ROOT = Path(__file__).resolve().parent.parent
SCHOOL = "storm"
# Devices per worker process: each holds one connection (two fds with TLS) per device.
PER_WORKER = 3400
ENROLL_WINDOW = 64


@dataclass
class Events:
    """What the workers printed, gathered by one thread per worker."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # device index -> times of its Welcomes
    welcomes: dict[int, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    # (time, phase, code, details, hint)
    failures: list[tuple[float, str, str, str, str | None]] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)

    def take(self, line: str) -> None:
        record = json.loads(line)
        with self.lock:
            if record["e"] == "w":
                self.welcomes[record["d"]].append(record["t"])
            elif record["e"] == "f":
                self.failures.append(
                    (record["t"], record["p"], record["c"], record["x"], record["h"])
                )
            elif record["e"] == "acked":
                self.acked.update(record["acked"])

    def back_since(self, since: float, devices: int) -> list[float] | None:
        """Each device's first Welcome after ``since``, if every device has one."""
        with self.lock:
            firsts = [
                next((t for t in self.welcomes[i] if t > since), None) for i in range(devices)
            ]
        return None if any(t is None for t in firsts) else [t for t in firsts if t is not None]


def enroll_all(port: int, ca: bytes, secret: str, count: int) -> list[dict[str, object]]:
    """Enrolls ``count`` devices through the real Enroll call, a window at a time."""
    channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca))
    enroll = channel.unary_unary(
        "/schoolfleet.v1.AgentService/Enroll",
        request_serializer=agent_pb2.EnrollRequest.SerializeToString,
        response_deserializer=agent_pb2.EnrollResponse.FromString,
    )
    rows: list[dict[str, object]] = []
    for start in range(0, count, ENROLL_WINDOW):
        window: list[tuple[int, bytes, grpc.Future]] = []  # type: ignore[type-arg]
        for index in range(start, min(count, start + ENROLL_WINDOW)):
            private = new_key()
            request = agent_pb2.EnrollRequest(
                token=secret, device_id=f"storm-{index:05d}", csr_pem=csr_pem(private)
            )
            window.append((index, key_pem(private), enroll.future(request, timeout=60)))
        for index, key, future in window:
            rows.append(
                {
                    "index": index,
                    "id": f"storm-{index:05d}",
                    "key": key.decode(),
                    "cert": future.result().certificate_pem.decode(),
                }
            )
    channel.close()
    return rows


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def store_rows(database: Path) -> dict[str, tuple[int, int]]:
    """device_id -> (last_seq, stream_id), read-only."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT device_id, last_seq, stream_id FROM devices").fetchall()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


@dataclass
class Run:
    """One SIGTERM and restart with every device connected."""

    kib_per_stream: float
    shutdown_s: float
    # The controller's own account: SIGTERM to its last line, and the streams it did not
    # tell within its grace (the exit cut them).
    stopped_s: float
    untold: int
    tracebacks: int
    left_up: int
    back_all_s: float
    back_median_s: float
    back_p90_s: float
    down_s: float
    failures: collections.Counter[tuple[str, str, str]]


def _start_workers(
    work: Path, controller: Controller, rows: list[dict[str, object]], events: Events
) -> list[subprocess.Popen[str]]:
    procs = []
    count = math.ceil(len(rows) / PER_WORKER)
    size = math.ceil(len(rows) / count)
    for n in range(count):
        part = work / f"devices-{n}.json"
        part.write_text(json.dumps(rows[n * size : (n + 1) * size]))
        with (work / f"worker-{n}.log").open("w") as log:
            procs.append(start_worker(controller, part, events, log))
    return procs


def start_worker(
    controller: Controller, devices: Path, events: Events, stderr: TextIO | None = None
) -> subprocess.Popen[str]:
    """A bench.storm_devices process for the devices in ``devices`` (JSON rows), on the
    controller's port; its lines go to ``events``."""
    ca = controller.workdir / "data/pki/ca.crt"
    return spawn_worker(controller.address, ca, devices, events.take, stderr)


def spawn_worker(
    address: str,
    ca: Path,
    devices: Path,
    take: Callable[[str], None],
    stderr: TextIO | None = None,
) -> subprocess.Popen[str]:
    """A bench.storm_devices process for the devices in ``devices`` (JSON rows), reaching
    ``address`` (a controller, or a balancer in front of several) with the CA's
    certificate ``ca``; each line it prints goes to ``take``, from a thread named
    ``pump-PID``. End it with ``end_worker``."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.storm_devices",
            f"--address={address}",
            f"--ca={ca}",
            f"--devices={devices}",
            f"--school={SCHOOL}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=ROOT,
    )
    threading.Thread(target=_pump, args=(proc, take), name=f"pump-{proc.pid}", daemon=True).start()
    return proc


def _pump(proc: subprocess.Popen[str], take: Callable[[str], None]) -> None:
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            take(line)


def end_worker(worker: subprocess.Popen[str]) -> None:
    """End of input stops the worker (it prints its acks first); killed if it hangs.
    Returns once its every line was taken."""
    if worker.poll() is None and worker.stdin is not None and not worker.stdin.closed:
        worker.stdin.close()
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(5)
    for thread in threading.enumerate():
        if thread.name == f"pump-{worker.pid}":
            thread.join(10)


def unstored(acked: dict[str, int], stored: dict[str, int]) -> dict[str, tuple[int, int]]:
    """The devices whose highest acked heartbeat is beyond what the store holds for them
    (its ``last_seq``): device -> (acked, stored). Empty: nothing acked was lost."""
    return {
        device: (seq, stored.get(device, 0))
        for device, seq in acked.items()
        if stored.get(device, 0) < seq
    }


def _listening(port: int, within: float) -> float:
    """The time the port first takes a TCP connection."""
    deadline = time.time() + within
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return time.time()
        time.sleep(0.02)
    raise RuntimeError(f"port {port} not listening within {within:g}s")


def start_again(controller: Controller) -> float:
    """Starts the controller on its port again; when it listened. The storm may keep
    the new process from writing its ports file for longer than Controller.start
    waits: its port is known, so that wait is allowed to fail."""
    probe = concurrent.futures.ThreadPoolExecutor(1).submit(_listening, controller.grpc_port, 300)
    try:
        controller.start()
    except AssertionError:
        wait_until((controller.workdir / "ports.json").exists, 300, "ports file", step=0.5)
    return probe.result()


def one_run(controller: Controller, events: Events, devices: int, baseline_kib: int) -> Run:
    """SIGTERM with every device connected, start again, wait for all to be back."""
    assert controller.proc is not None
    kib = (rss_kib(controller.proc.pid) - baseline_kib) / devices
    log_from = len(controller.log_text())
    signalled = time.time()
    controller.stop(signal.SIGTERM, timeout=120)
    shutdown = time.time() - signalled
    tail = controller.log_text()[log_from:]
    left_up = sum(1 for _, stream in store_rows(controller.database).values() if stream)
    listening = start_again(controller)
    back = wait_until(
        lambda: events.back_since(listening, devices), 300, "every device back", step=0.5
    )
    since = [t - listening for t in back]
    with events.lock, (controller.workdir / "attempts.jsonl").open("a") as kept:
        # Kept for a closer look: each ended attempt with the run's moments.
        for failure in events.failures:
            kept.write(json.dumps([*failure, signalled, listening]) + "\n")
        failed = collections.Counter(
            (phase, code, f"hint={hint}" if hint else details[:70])
            for t, phase, code, details, hint in events.failures
            if t >= signalled
        )
        events.failures.clear()
    own = re.search(r"total_s=([\d.]+)", tail)
    untold = re.search(r"streams not told within the grace count=(\d+)", tail)
    return Run(
        kib_per_stream=kib,
        shutdown_s=shutdown,
        stopped_s=float(own.group(1)) if own else -1.0,
        untold=int(untold.group(1)) if untold else 0,
        tracebacks=tail.count("Traceback"),
        left_up=left_up,
        back_all_s=max(since),
        back_median_s=statistics.median(since),
        back_p90_s=sorted(since)[int(0.9 * (len(since) - 1))],
        down_s=listening - signalled,
        failures=failed,
    )


def _median(values: list[float]) -> str:
    return f"**{statistics.median(values):.1f}** ({' / '.join(f'{v:.1f}' for v in values)})"


def report(
    args: argparse.Namespace, runs: list[Run], acked_ok: str, took: float, load_before: str
) -> str:
    lines = [
        f"Machine: {machine().line()} Load average (1 min) {load_before} before, "
        f"{load_average()} after.",
        "",
        f"Command (took {took / 60:.1f} min): `.venv/bin/python -m bench.restart_storm "
        f"--devices {args.devices} --runs {args.runs}"
        + "".join(f" --setting {s}" for s in args.setting)
        + "`",
        "",
        f"{args.devices:,} mutual-TLS devices, enrolled through Enroll, in "
        f"{math.ceil(args.devices / PER_WORKER)} worker process(es), one connection each. "
        "Medians, each run in brackets.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| seconds from listening again until **every** device has its Welcome | "
        f"{_median([r.back_all_s for r in runs])} |",
        f"| seconds until half are back | {_median([r.back_median_s for r in runs])} |",
        f"| seconds until 90% are back | {_median([r.back_p90_s for r in runs])} |",
        f"| seconds from SIGTERM until the new process listens | "
        f"{_median([r.down_s for r in runs])} |",
        f"| seconds from SIGTERM to exit (shutdown, {args.devices:,} streams) | "
        f"{_median([r.shutdown_s for r in runs])} |",
        f"| of which the controller's own stop (its log: SIGTERM to its last line) | "
        f"{_median([r.stopped_s for r in runs])} |",
        f"| streams not told within the grace (cut by the exit) | "
        f"{' / '.join(f'{r.untold:,}' for r in runs)} |",
        f"| tracebacks in the log at shutdown | {' / '.join(str(r.tracebacks) for r in runs)} |",
        f"| streams left marked up in the store after exit | "
        f"{' / '.join(str(r.left_up) for r in runs)} |",
        f"| controller memory per stream, KiB (RSS with all streams up less at start) | "
        f"{_median([r.kib_per_stream for r in runs])} |",
        f"| every acked heartbeat in the store after the last shutdown | {acked_ok} |",
        "",
        "Attempts that ended, from SIGTERM until every device was back, per run "
        "(phase, status, the controller's hint or the details):",
        "",
    ]
    for n, run in enumerate(runs, 1):
        for (phase, code, what), count in sorted(run.failures.items(), key=lambda i: -i[1]):
            lines.append(f"- run {n}: {count:,} x {phase} Welcome, {code}, {what}")
    return "\n".join(lines)


def _acked_stored(
    controller: Controller, workers: list[subprocess.Popen[str]], events: Events
) -> str:
    """Stops the controller, then the devices; whether every acked heartbeat is stored."""
    controller.stop(signal.SIGTERM, timeout=120)
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.close()
    for worker in workers:
        worker.wait(60)
    stored = {device: seq for device, (seq, _) in store_rows(controller.database).items()}
    short = unstored(events.acked, stored)
    if short or not events.acked:
        return f"NO: {len(short)} devices short"
    return f"yes ({len(events.acked):,} devices' acks checked)"


def main() -> None:
    """Runs the benchmark and prints its record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--setting", action="append", default=[], help="controller NAME=VALUE")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument(
        "--controller-code", type=Path, help="run the controller from this checkout (before/after)"
    )
    args = parser.parse_args()
    # A SIGTERM still stops the controller and the workers it started (finally below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    started = time.time()
    load_before = load_average()
    work = args.keep or Path(tempfile.mkdtemp(prefix="restart-storm-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    init_controller_ca(data)
    env = {
        **tls_env(data),
        "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "30",
    }
    if args.controller_code:
        env["PYTHONPATH"] = str(args.controller_code.resolve())
    for setting in args.setting:
        name, _, value = setting.partition("=")
        env[f"SCHOOLFLEET_CONTROLLER_{name.upper()}"] = value
    controller = Controller(work, port=free_port(), env=env)
    events = Events()
    workers: list[subprocess.Popen[str]] = []
    try:
        controller.start()
        assert controller.proc is not None
        secret = seed_token(controller.database, SCHOOL, uses=args.devices)
        ca = (data / "pki/ca.crt").read_bytes()
        rows = enroll_all(controller.enroll_port, ca, secret, args.devices)
        print(f"enrolled {len(rows)} in {time.time() - started:.0f}s", file=sys.stderr)
        time.sleep(2)
        baseline = rss_kib(controller.proc.pid)
        workers = _start_workers(work, controller, rows, events)
        wait_until(lambda: events.back_since(0, args.devices), 600, "first connections", step=1)
        runs = []
        for n in range(args.runs):
            time.sleep(5)
            runs.append(one_run(controller, events, args.devices, baseline))
            print(f"run {n + 1}: {runs[-1]}", file=sys.stderr)
        time.sleep(5)
        acked = _acked_stored(controller, workers, events)
        print(report(args, runs, acked, time.time() - started, load_before))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        controller.stop()
        if args.keep is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
