"""The processes of one run: the server under test and the generator workers.

Every process is started here and stopped by its own pid: SIGTERM and a bounded
wait, then SIGKILL. Callers register the stop on an AsyncExitStack right after the
start, so an error anywhere still leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_CONTROLLER_ENV = "SCHOOLFLEET_CONTROLLER_"
# Seconds a server gets to write its ports file, and a worker to answer a command.
STARTUP_SECONDS = 30.0
ANSWER_SECONDS = 30.0


# One JSON line from a generator worker (bench/loadgen.py writes them).
Record = dict[str, Any]


class RunFailed(Exception):
    """A process of the run did not start or answer as expected."""


@dataclass(frozen=True, slots=True)
class TargetKind:
    """A kind of server under test and the /metrics names that report its ingest."""

    name: str
    # Heartbeats durably stored (controller) or merely received (bare server).
    stored_metric: str
    received_metric: str
    streams_metric: str
    # A baseline server's module, run as ``python -m MODULE --ports-file F``.
    module: str = "bench.bare_server"


CONTROLLER = TargetKind(
    "controller",
    "schoolfleet_heartbeats_stored_total",
    "schoolfleet_heartbeats_received_total",
    "schoolfleet_connected_streams",
)
BARE = TargetKind(
    "bare",
    "bench_messages_received_total",
    "bench_messages_received_total",
    "bench_connected_streams",
)


@dataclass(frozen=True, slots=True)
class Target:
    """A running server under test."""

    kind: TargetKind
    proc: asyncio.subprocess.Process
    grpc_port: int
    metrics_port: int
    log: Path

    @property
    def address(self) -> str:
        """Where the generators connect."""
        return f"127.0.0.1:{self.grpc_port}"


def _child_env(controller_settings: dict[str, str]) -> dict[str, str]:
    """Our environment with the repo importable and only the controller settings given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONTROLLER_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # Ingest is measured on plaintext streams, like the earlier runs it is compared with.
    env[_CONTROLLER_ENV + "AGENT_TLS"] = "false"
    # Free ports only (older trees ignore a setting they do not know).
    env[_CONTROLLER_ENV + "UPLINK_LISTEN"] = "127.0.0.1:0"
    for key, value in controller_settings.items():
        env[_CONTROLLER_ENV + key.upper()] = value
    return env


async def start_target(
    kind: TargetKind,
    workdir: Path,
    controller_settings: dict[str, str],
    tree: Path | None = None,
) -> Target:
    """Starts the server on free ports of 127.0.0.1 and waits until it has written them.

    ``tree``: run the controller from that source tree (another commit's checkout)
    instead of the installed one.
    """
    ports_file = workdir / f"{kind.name}-ports.json"
    log = workdir / f"{kind.name}.log"
    cwd, env = ROOT, _child_env(controller_settings)
    if kind is CONTROLLER:
        # The run's own data folder, not /var/lib/schoolfleet: a controller holds its
        # folder's lock, and runs side by side must not share one.
        env.setdefault(_CONTROLLER_ENV + "DATA_DIR", str(workdir / "data"))
        config = workdir / "controller.toml"
        config.write_text("")  # not /etc/schoolfleet/controller.toml, whatever it holds
        program = [str(Path(sys.executable).parent / "schoolfleet-controller")]
        if tree is not None:
            # `-c` puts the working directory first on sys.path: the tree's own code.
            program = [sys.executable, "-c", "from controller.main import run; run()"]
            cwd, env["PYTHONPATH"] = tree, str(tree)
        argv = [
            *program,
            "serve",
            f"--config={config}",
            "--listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            f"--database=sqlite:{workdir / 'controller.db'}",
            f"--ports-file={ports_file}",
        ]
    else:
        argv = [sys.executable, "-m", kind.module, f"--ports-file={ports_file}"]
    with log.open("wb") as log_fh:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fh,
            stderr=log_fh,
            cwd=cwd,
            env=env,
        )
    deadline = time.monotonic() + STARTUP_SECONDS
    while not ports_file.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            await stop_process(proc)
            tail = log.read_text(errors="replace")[-2000:]
            raise RunFailed(f"{kind.name} did not start (exit {proc.returncode}):\n{tail}")
        await asyncio.sleep(0.05)
    ports = json.loads(ports_file.read_text())
    return Target(kind, proc, int(ports["grpc"]), int(ports["metrics"]), log)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 30.0) -> float:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the seconds it took to exit."""
    started = time.monotonic()
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return time.monotonic() - started


class Generator:
    """One load-generator worker process (bench/loadgen.py) and its line protocol."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(
        cls, target: Target, first: int, count: int, rate: float, log: Path
    ) -> Generator:
        """Starts a worker for devices ``first`` .. ``first+count-1``."""
        with log.open("ab") as log_fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.loadgen",
                f"--target={target.address}",
                f"--first={first}",
                f"--count={count}",
                f"--rate={rate!r}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_fh,
                cwd=ROOT,
                env=_child_env({}),
            )
        return cls(proc)

    @property
    def pid(self) -> int:
        """The worker's pid."""
        return self.proc.pid

    async def send(self, command: str) -> None:
        """Sends one command line (start, sample, stop)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, event: str, within: float = ANSWER_SECONDS) -> Record:
        """The next line from the worker, which must be ``event`` and come ``within`` s."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise RunFailed(f"generator pid {self.pid}: no {event!r} within {within:g}s") from None
        if not line:
            raise RunFailed(f"generator pid {self.pid} exited (code {self.proc.returncode})")
        record: Record = json.loads(line)
        if record.get("event") != event:
            raise RunFailed(f"generator pid {self.pid}: expected {event!r}, got {record}")
        return record

    async def ask(self, command: str, event: str) -> Record:
        """Sends ``command`` and returns the worker's answer."""
        await self.send(command)
        return await self.expect(event)

    async def stop(self) -> Record | None:
        """Asks the worker to close its streams; returns its final counters, if it gave them."""
        final = None
        if self.proc.returncode is None:
            try:
                final = await self.ask("stop", "stopped")
            except (RunFailed, ConnectionError):
                final = None
        await stop_process(self.proc, grace=5.0)
        return final


async def start_generators(
    stack: contextlib.AsyncExitStack,
    parts: Iterable[tuple[Target, int, int]],
    rate: float,
    log: Path,
    connect_timeout: float,
) -> tuple[list[Generator], list[Record]]:
    """A generator for each part (the target it dials, its first device, how many),
    each stopped with ``stack``; and their "ready" lines once every stream is open."""
    generators = []
    for target, first, count in parts:
        gen = await Generator.start(target, first, count, rate, log)
        stack.push_async_callback(gen.stop)
        generators.append(gen)
    ready = await asyncio.gather(*(g.expect("ready", connect_timeout) for g in generators))
    return generators, list(ready)


def merged_errors(records: list[Record]) -> dict[str, int]:
    """The generators' error counts by reason, summed over their lines."""
    merged: dict[str, int] = {}
    for record in records:
        for reason, count in record.get("errors", {}).items():
            merged[reason] = merged.get(reason, 0) + count
    return merged
