"""End to end: `make demo-city` as the README has a person run it. Three replicas on a
PostgreSQL cluster of the demo's own behind HAProxy, every device online through the
balancer and the streams spread over the three; `make demo-city` again starts nothing;
a replica killed with -9 loses no device and the next `make demo-city` starts it
alone again; `make demo-stop` stops every process the demo started, PostgreSQL too.

The demo runs in a folder of the test's own (short, under /tmp: the cluster's socket is
in it) on fourteen free ports (SCHOOLFLEET_DEMO_DIR, SCHOOLFLEET_DEMO_CITY_PORT), beside
any demo a person has running. Its processes are stopped by the pids it recorded,
whatever the test did.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import BIN, Result, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
REPLICAS = ("replica-1", "replica-2", "replica-3")
DEVICES = [
    f"{kind}-{school}-{room}"
    for school in ("2101", "2102", "2103")
    for kind, room in (("panel", "101"), ("panel", "102"), ("laptop", "t01"))
]
PORTS = 14


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports free right now, below the
    ephemeral range: there, a busy machine's outgoing connections hold ports too."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        base = random.randrange(10_000, low - count)
        holders: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                held = socket.socket()
                holders.append(held)
                held.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for held in holders:
                held.close()
        return base
    raise AssertionError(f"no {count} consecutive free ports")


def _runs(pid: int) -> bool:
    """Whether ``pid`` is a running process (not a zombie waiting for init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


def _naming(folder: Path) -> list[int]:
    """Every running process with an argument inside ``folder``."""
    inside = os.fsencode(folder) + b"/"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(inside) for arg in argv):
            found.append(int(proc.name))
    return found


class City:
    """`make demo-city` and `make demo-stop` in one folder, on one block of ports."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.env = {
            **os.environ,
            "SCHOOLFLEET_DEMO_DIR": str(folder),
            "SCHOOLFLEET_DEMO_CITY_PORT": str(port),
            "SCHOOLCTL_CONFIG": str(folder / "city" / "schoolctl.toml"),
        }
        for variable in ("SCHOOLCTL_TOKEN", "SCHOOLCTL_CONTROLLER", "MAKEFLAGS"):
            self.env.pop(variable, None)

    def make(self, target: str) -> Result:
        # -o install: the suite runs inside the installed virtualenv already.
        done = subprocess.run(
            ["make", "--no-print-directory", "-o", "install", target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=self.env,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ctl(self, *args: str) -> Result:
        done = subprocess.run(
            [str(BIN / "schoolctl"), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=self.env,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def pids(self) -> dict[str, int]:
        path = self.folder / "city" / "pids.json"
        pids: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        return pids

    def figures(self, replica: int) -> tuple[int, set[str], set[str]] | None:
        """Replica ``replica``'s (1..3) streams, the leases it holds and every lease it
        knows of, from its /metrics; None when it does not answer."""
        url = f"http://127.0.0.1:{self.port + 4 * replica - 1}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        streams = re.search(r"^schoolfleet_connected_streams (\S+)$", text, re.M)
        leases = re.findall(r'^schoolfleet_lease_held\{lease="([^"]+)"\} (\S+)$', text, re.M)
        assert streams, text
        held = {lease for lease, value in leases if float(value) == 1}
        return int(float(streams.group(1))), held, {lease for lease, _ in leases}

    def leases(self) -> dict[str, list[int]] | None:
        """Each lease the replicas know of, and which replicas (1..3) hold it."""
        figures = [self.figures(n) for n in (1, 2, 3)]
        if any(f is None for f in figures):
            return None
        return {
            lease: [n for n, f in enumerate(figures, 1) if f and lease in f[1]]
            for f in figures
            if f
            for lease in f[2]
        }

    def holder(self, lease: str) -> int | None:
        """The replica holding ``lease`` once exactly one does."""
        holders = (self.leases() or {}).get(lease, [])
        return holders[0] if len(holders) == 1 else None


@pytest.fixture
def city() -> Iterator[City]:
    # PostgreSQL's socket path must fit in 107 bytes; pytest's tmp_path can come close.
    folder = Path(tempfile.mkdtemp(prefix="sf-city-", dir="/tmp"))
    # The `postgres` account (under root) must pass through it to its own folder.
    folder.chmod(0o755)
    c = City(folder, _free_ports(PORTS))
    seen: set[int] = set()
    try:
        yield c
    finally:
        seen.update(c.pids().values())
        c.make("demo-stop")
        leftover = [pid for pid in seen if _runs(pid)] + _naming(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert leftover == [], f"city demo processes left running: {leftover}"


@pytest.mark.slow
def test_demo_city_twice_lose_a_replica_and_stop(city: City) -> None:
    first = city.make("demo-city")
    assert first.code == 0, first
    assert "SchoolFleet city demo is running" in first.out, first.out
    assert first.err == "", first.err
    pids = city.pids()
    assert sorted(pids) == sorted(["postgres", *REPLICAS, "haproxy", *DEVICES])
    assert all(_runs(pid) for pid in pids.values()), pids
    for name in REPLICAS:
        assert f"  {name}  pid {pids[name]} " in first.out, first.out

    # schoolctl is logged in through the balancer, and every device is online there.
    balancer = f'controller = "127.0.0.1:{city.port + 1}"'
    assert balancer in (city.folder / "city" / "schoolctl.toml").read_text()
    status = city.ctl("status", "--json")
    assert status.code == 0, status
    assert status.json()["totals"]["online"] == len(DEVICES), status.out
    devices = city.ctl("devices", "list", "--json")
    assert sorted((d["device_id"], d["status"]) for d in devices.json()) == [
        (d, "online") for d in sorted(DEVICES)
    ]
    # Each replica holds some of the streams, none twice; each lease has one holder.
    figures = [city.figures(n) for n in (1, 2, 3)]
    assert all(f is not None for f in figures), figures
    streams = [f[0] for f in figures if f]
    assert sum(streams) == len(DEVICES) and min(streams) > 0, streams

    def one_each() -> dict[str, list[int]] | None:
        leases = city.leases()
        return leases if leases and all(len(h) == 1 for h in leases.values()) else None

    leases = wait_until(one_each, 15, "each lease held by exactly one replica")
    assert {"lesson-dispatcher", "probes", "store-gauges"} <= set(leases), leases

    again = city.make("demo-city")
    assert again.code == 0, again
    assert again.out.startswith("the city demo is already running"), again.out
    assert "kill -9 " in again.out and "schoolctl status" in again.out, again.out
    assert city.pids() == pids, "a second start starts nothing"

    # The dispatcher's replica killed without a word: its agents come back through the
    # others, and the next start brings back that replica alone, on its old ports.
    holder = wait_until(lambda: city.holder("lesson-dispatcher"), 15, "the dispatcher's replica")
    victim = f"replica-{holder}"
    os.kill(pids[victim], signal.SIGKILL)
    survivors = [n for n in (1, 2, 3) if n != holder]
    wait_until(
        lambda: sum((city.figures(n) or (0,))[0] for n in survivors) == len(DEVICES),
        20,
        "every agent back through the surviving replicas",
    )
    back = city.make("demo-city")
    assert back.code == 0, back
    assert back.out.startswith(
        f"the city demo was running without {victim}: starting it again\n"
    ), back.out
    after = city.pids()
    assert {k: v for k, v in after.items() if k != victim} == {
        k: v for k, v in pids.items() if k != victim
    }
    assert after[victim] != pids[victim] and _runs(after[victim])
    assert city.figures(holder) is not None, f"{victim} serves again"
    assert city.ctl("status", "--json").json()["totals"]["online"] == len(DEVICES)

    stopped = city.make("demo-stop")
    assert (stopped.code, stopped.out) == (
        0,
        f"stopped {len(after)} processes of the city demo\n",
    ), stopped
    started = set(pids.values()) | set(after.values())
    assert [pid for pid in started if _runs(pid)] == []
    assert _naming(city.folder) == [], "a process of the demo still runs"
    assert not (city.folder / "city" / "pg" / "data" / "postmaster.pid").exists()
    twice = city.make("demo-stop")
    assert (twice.code, twice.out) == (0, "the demo is not running: nothing to stop\n"), twice


def test_demo_city_names_the_missing_packages_and_starts_nothing(tmp_path: Path) -> None:
    # Only haproxy is installed, as far as the demo can see (SCHOOLFLEET_TOOLS_PATH).
    tools = tmp_path / "tools"
    tools.mkdir()
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    assert haproxy, "haproxy should be on this machine"
    (tools / "haproxy").symlink_to(haproxy)
    city = City(tmp_path / "demo", _free_ports(PORTS))
    city.env["SCHOOLFLEET_TOOLS_PATH"] = str(tools)
    got = city.make("demo-city")
    assert got.code != 0, got
    assert got.err.splitlines()[0] == (
        "demo: make demo-city needs Debian packages that are not installed: postgresql; "
        "as root run: apt-get update && apt-get install -y --no-install-recommends postgresql"
    ), got.err
    assert got.out == "" and not (tmp_path / "demo").exists(), got
