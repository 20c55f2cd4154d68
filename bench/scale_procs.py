"""Controllers for the scale-out benchmark: replicas on one store URL, a central-ops
user on it, started and stopped by pid.

Like bench/procs.py's ``start_target``, but the store is a URL (a PostgreSQL
database several replicas share, or a SQLite file for the single controller the
replicas are compared with), and each replica has its own data folder (a controller
holds its folder's lock). The processes are ``bench.procs.Target``s, so the
generators (``bench.procs.Generator``) connect to them as to any server under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from bench.procs import CONTROLLER, ROOT, STARTUP_SECONDS, RunFailed, Target, stop_process

BIN = Path(sys.executable).parent
_CONTROLLER_ENV = "SCHOOLFLEET_CONTROLLER_"


def child_env(settings: dict[str, str]) -> dict[str, str]:
    """Our environment with the repository importable and only ``settings`` given to
    the controller (plaintext device streams unless they say otherwise)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONTROLLER_ENV)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env[_CONTROLLER_ENV + "AGENT_TLS"] = "false"
    env[_CONTROLLER_ENV + "UPLINK_LISTEN"] = "127.0.0.1:0"
    for key, value in settings.items():
        env[_CONTROLLER_ENV + key.upper()] = value
    return env


async def _run(argv: list[str], env: dict[str, str], within: float = 60.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except (TimeoutError, asyncio.CancelledError):
        await stop_process(proc, grace=2.0)
        raise
    if proc.returncode != 0:
        raise RunFailed(f"{' '.join(argv[:3])} failed ({proc.returncode}): {err.decode()[-800:]}")
    return out.decode()


async def create_user(workdir: Path, database: str) -> str:
    """A central-ops user in the store at ``database``, as an operator makes the
    first one; its token."""
    config = workdir / "users.toml"
    config.write_text("")
    out = await _run(
        [
            str(BIN / "schoolfleet-controller"),
            "users",
            "create",
            "bench",
            "--role",
            "central-ops",
            f"--config={config}",
            f"--database={database}",
            "--json",
        ],
        child_env({}),
    )
    token: str = json.loads(out)["token"]
    return token


async def start_replica(
    workdir: Path, database: str, settings: dict[str, str], name: str
) -> Target:
    """A controller on free ports of 127.0.0.1 with its own folder ``workdir/name``,
    its store at ``database``; returns once it has written its ports."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    ports_file, log, config = folder / "ports.json", folder / "controller.log", folder / "c.toml"
    config.write_text("")  # not /etc/schoolfleet/controller.toml, whatever it holds
    env = child_env({"data_dir": str(folder / "data"), **settings})
    argv = [
        str(BIN / "schoolfleet-controller"),
        "serve",
        f"--config={config}",
        "--listen=127.0.0.1:0",
        "--metrics-listen=127.0.0.1:0",
        f"--database={database}",
        f"--ports-file={ports_file}",
    ]
    with log.open("ab") as log_fh:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fh,
            stderr=log_fh,
            cwd=ROOT,
            env=env,
        )
    deadline = time.monotonic() + STARTUP_SECONDS
    while not ports_file.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            await stop_process(proc)
            tail = log.read_text(errors="replace")[-2000:]
            raise RunFailed(f"replica {name} did not start (exit {proc.returncode}):\n{tail}")
        await asyncio.sleep(0.05)
    ports = json.loads(ports_file.read_text())
    return Target(CONTROLLER, proc, int(ports["grpc"]), int(ports["metrics"]), log)


def enroll_port(target: Target) -> int:
    """The replica's TLS enrollment port (with agent_tls on)."""
    ports = json.loads((target.log.parent / "ports.json").read_text())
    return int(ports["enroll"])


async def kill(target: Target) -> float:
    """SIGKILL, as a machine's sudden death; the wall time it was sent."""
    at = time.time()
    if target.proc.returncode is None:
        target.proc.send_signal(signal.SIGKILL)
    await target.proc.wait()
    return at
