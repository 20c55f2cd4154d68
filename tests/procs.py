"""Real SchoolFleet processes for tests: start, wait until ready, stop by pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BIN = Path(sys.executable).parent
T = TypeVar("T")
# Each started controller's central-ops token, by the addresses schoolctl may use.
_ADMIN_TOKENS: dict[str, str] = {}


def wait_until(check: Callable[[], T | None], timeout: float, what: str, step: float = 0.1) -> T:
    """Polls ``check`` until it returns something truthy; fails after ``timeout`` seconds.

    Waits at least as long as a check took before the next: a check that starts a
    process (schoolctl: ~0.4 s of a core) would otherwise take a core from what the
    test waits for, on a machine of two."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while (now := time.monotonic()) < deadline:
        last = check()
        if last:
            return last
        took = time.monotonic() - now
        # The last check comes at the deadline, however long the wait between.
        time.sleep(max(0.0, min(max(step, took), deadline - time.monotonic() - took)))
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def init_controller_ca(data_dir: Path) -> Path:
    """Runs the real ``schoolfleet-controller init`` for 127.0.0.1; returns the pki folder."""
    where = ["--data-dir", str(data_dir), "--address", "127.0.0.1"]
    subprocess.run(
        [str(BIN / "schoolfleet-controller"), "init", *where],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return data_dir / "pki"


def tls_env(data_dir: Path, enroll_listen: str = "127.0.0.1:0") -> dict[str, str]:
    """Controller settings for mutual TLS with the CA in ``data_dir``, 1 s heartbeats."""
    return {
        "SCHOOLFLEET_CONTROLLER_DATA_DIR": str(data_dir),
        "SCHOOLFLEET_CONTROLLER_AGENT_TLS": "true",
        "SCHOOLFLEET_CONTROLLER_ENROLL_LISTEN": enroll_listen,
        "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
    }


def midday_zone(now: float | None = None) -> str:
    """A time zone where it is about noon now (Etc/GMT-N is UTC+N): a test's "today"
    then holds what it schedules within hours, whenever the suite runs, where UTC's
    would cross midnight under a run that starts before it."""
    hour = time.gmtime(time.time() if now is None else now).tm_hour
    offset = (12 - hour + 12) % 24 - 12  # -12 .. +11 hours from UTC
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def free_port() -> int:
    """A loopback port free right now (for a controller that must keep its port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class CreatedUser:
    name: str
    token: str


@dataclass
class Controller:
    """A real ``schoolfleet-controller serve`` process."""

    workdir: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # Where the gRPC ports listen, e.g. the machine's end of a test's veth pair.
    host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int = 0
    # The uplink endpoint devices fetch their payload from (on ``host``, like gRPC).
    uplink_port: int = 0
    # With agent_tls: the TLS port for enrollment and schoolctl.
    enroll_port: int = 0
    # A central-ops user's token, made by `schoolfleet-controller users create` at
    # the first start; tests.procs.schoolctl uses it for this controller.
    admin_token: str = ""
    # The store's URL when not the SQLite file in workdir (replicas share PostgreSQL).
    database_url: str = ""

    @property
    def database(self) -> Path:
        return self.workdir / "controller.db"

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:{self.database}"

    @property
    def log(self) -> Path:
        return self.workdir / "controller.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self) -> Controller:
        ports = self.workdir / "ports.json"
        ports.unlink(missing_ok=True)
        (self.workdir / "controller.toml").touch()
        # A lab controller unless the test asks for TLS (tests.procs.tls_env).
        env = {
            **os.environ,
            "SCHOOLFLEET_CONTROLLER_AGENT_TLS": "false",
            # Never the fixed default port: tests run controllers side by side.
            "SCHOOLFLEET_CONTROLLER_UPLINK_LISTEN": f"{self.host}:0",
            # No probes unless a test asks: inventory rows name addresses that no test
            # made, and probes would reach them through the machine's default route.
            "SCHOOLFLEET_CONTROLLER_PROBE_INTERVAL": "0",
            # The test's own, never the machine's /var/lib/schoolfleet.
            "SCHOOLFLEET_CONTROLLER_DATA_DIR": str(self.workdir / "data"),
            # Today's lessons and their figures hold a test's lessons at any hour.
            "SCHOOLFLEET_CONTROLLER_TIMEZONE": midday_zone(),
            **self.env,
        }
        if not self.admin_token:
            self.admin_token = self.create_user("ops", "central-ops").token
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "schoolfleet-controller"),
                    "serve",
                    "--config",
                    str(self.workdir / "controller.toml"),
                    "--listen",
                    f"{self.host}:{self.port}",
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--database",
                    self.store_url,
                    "--ports-file",
                    str(ports),
                ],
                stdout=log,
                stderr=log,
                env=env,
            )
        proc = self.proc

        def ready() -> dict[str, int] | None:
            if proc.poll() is not None:
                raise AssertionError(f"controller exited {proc.returncode}:\n{self.log_text()}")
            return json.loads(ports.read_text()) if ports.exists() else None

        got = wait_until(ready, 20, "controller ports file")
        self.grpc_port, self.metrics_port = got["grpc"], got["metrics"]
        self.enroll_port = got.get("enroll", 0)
        self.uplink_port = got.get("uplink", 0)
        _ADMIN_TOKENS[self.address] = self.admin_token
        # tls_env's enroll_listen is on loopback unless a test says otherwise.
        _ADMIN_TOKENS[f"127.0.0.1:{self.enroll_port}"] = self.admin_token
        return self

    def create_user(self, name: str, role: str, *schools: str) -> CreatedUser:
        """Runs ``schoolfleet-controller users create`` on this controller's database."""
        args = ["users", "create", name, "--role", role, "--json"]
        for school in schools:
            args += ["--school", school]
        done = self.cli(*args)
        if done.code != 0:
            raise AssertionError(f"users create {name} failed: {done.err}")
        return CreatedUser(name, done.json()["token"])

    def cli(self, *args: str) -> Result:
        """``schoolfleet-controller ARGS`` with this controller's settings and store."""
        args += ("--config", str(self.workdir / "controller.toml"))
        return controller_cli(*args, "--database", self.store_url, env=self.env)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signals the process by pid and waits; returns its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"controller did not stop in {timeout}s") from None
        finally:
            self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metrics(self) -> dict[str, float]:
        """Samples from /metrics: ``name{labels}`` -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


@dataclass
class Agent:
    """A real ``schoolfleet-agent`` process with its own config file."""

    workdir: Path
    device_id: str
    kind: str
    school_id: str
    room_id: str
    controller: str
    extra: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # A network namespace the test made: the agent runs inside it.
    netns: str = ""
    # Added to the agent's environment (PYTHONPATH for an earlier release's agent).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.workdir / f"agent-{self.device_id}.log"

    def start(self) -> Agent:
        config = self.workdir / f"agent-{self.device_id}.toml"
        values: dict[str, Any] = {
            "device_id": self.device_id,
            "kind": self.kind,
            "school_id": self.school_id,
            "room_id": self.room_id,
            "controller": self.controller,
            "heartbeat_interval": 1,
            "backoff_initial": 0.2,
            "backoff_cap": 1.0,
            "spool_path": str(self.workdir / f"spool-{self.device_id}.db"),
            "cert_dir": str(self.workdir / f"tls-{self.device_id}"),
            # Plaintext to a lab controller unless the test gives the controller's CA.
            "tls": "ca_cert" in self.extra,
            **self.extra,
        }
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        # ip netns exec execs the agent, so the pid stop() signals is the agent's own.
        wrapper = ["ip", "netns", "exec", self.netns] if self.netns else []
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*wrapper, str(BIN / "schoolfleet-agent"), "--config", str(config)],
                stdout=log,
                stderr=log,
                env={**os.environ, **self.env},
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self.proc = None


@dataclass(frozen=True)
class Result:
    """What a user running a command sees."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def controller_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``schoolfleet-controller ARGS``, as an operator on the controller's machine runs
    it (``env`` added to this process's environment)."""
    done = subprocess.run(
        [str(BIN / "schoolfleet-controller"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    return Result(done.returncode, done.stdout, done.stderr)


def schoolctl(
    controller: str,
    *args: str,
    timeout: float = 30,
    token: str | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> Result:
    """Runs the installed ``schoolctl`` as a user would: as central ops of that
    controller unless ``token`` says otherwise, never with this machine's config file."""
    environ = {
        **os.environ,
        "SCHOOLCTL_CONFIG": os.devnull,
        "SCHOOLCTL_TOKEN": _ADMIN_TOKENS.get(controller, "") if token is None else token,
        **(env or {}),
    }
    done = subprocess.run(
        [str(BIN / "schoolctl"), "--controller", controller, "--timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environ,
        input=stdin,
    )
    return Result(done.returncode, done.stdout, done.stderr)
