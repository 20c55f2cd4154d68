"""Debian's HAProxy in TCP mode in front of controller replicas, as a city runs them:
one address for every agent and schoolctl, each connection passed whole (TLS and
all) to a live replica, a dead one dropped from the rotation by a health check.
Started on loopback, stopped by its pid."""

from __future__ import annotations

import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from demo import balancer
from demo.balancer import Route
from tests.procs import free_port, wait_until

# How often a replica's port is tried, and after how many failures in a row it is out.
CHECK_INTER_MS = 300
CHECK_FALL = 2


def config(
    listen_port: int,
    backends: list[tuple[str, int]],
    binds: tuple[str, ...] = ("127.0.0.1",),
    proxy_source: str = "",
) -> str:
    """The demo's balancer (demo/balancer.py): one frontend for agents and schoolctl."""
    route = Route("agents", listen_port, backends, binds, proxy_source)
    return balancer.config([route], CHECK_INTER_MS, CHECK_FALL)


@dataclass
class HaProxy:
    """A running haproxy; ``address`` is where agents connect."""

    workdir: Path
    backends: list[tuple[str, int]]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    # Where it listens (the first is where this test process reaches it), and the
    # address it reaches the replicas from with a PROXY v2 header ("": no header).
    binds: tuple[str, ...] = ("127.0.0.1",)
    proxy_source: str = ""

    @property
    def address(self) -> str:
        return f"{self.binds[0]}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "haproxy.log"

    def start(self) -> HaProxy:
        binary = balancer.binary()
        assert binary, "haproxy is not installed (.ci/packages.sh installs it)"
        self.port = self.port or free_port()
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(config(self.port, self.backends, self.binds, self.proxy_source))
        with self.log.open("ab") as log:
            # -db: in the foreground, so that the pid is haproxy's own.
            self.proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=log)
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"haproxy exited {proc.returncode}: {self.log.read_text()}")
            try:
                socket.create_connection((self.binds[0], self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(listening, 10, "haproxy listening")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self.proc = None
