"""End to end: `make demo` as the README has a person run it, again and again.

The demo runs in the test's own folder on four free ports (SCHOOLFLEET_DEMO_DIR,
SCHOOLFLEET_DEMO_PORT), beside any demo a person has running. Its processes are
stopped by the pids it recorded, whatever the test did.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import BIN, Result, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DEVICES = 6


def _four_free_ports() -> int:
    """The first of four consecutive loopback ports free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + 3 > 65535:
            continue
        try:
            holders = []
            for port in range(base, base + 4):
                held = socket.socket()
                holders.append(held)
                held.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for held in holders:
                held.close()
        return base
    raise AssertionError("no four consecutive free ports")


class Demo:
    """`make demo` and friends in one folder, on one set of ports."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.env = {
            **os.environ,
            "SCHOOLFLEET_DEMO_DIR": str(folder),
            "SCHOOLFLEET_DEMO_PORT": str(port),
            "SCHOOLCTL_CONFIG": str(folder / "schoolctl.toml"),
        }
        self.env.pop("SCHOOLCTL_TOKEN", None)
        self.env.pop("SCHOOLCTL_CONTROLLER", None)
        self.env.pop("MAKEFLAGS", None)

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
        path = self.folder / "pids.json"
        pids: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
        return pids


def _running(pid: int) -> bool:
    try:
        return b"schoolfleet-" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    d = Demo(tmp_path / "demo", _four_free_ports())
    seen: set[int] = set()
    try:
        yield d
    finally:
        seen.update(d.pids().values())
        d.make("demo-stop")
        leftover = [pid for pid in seen if _running(pid)]
        assert leftover == [], f"demo processes left running: {leftover}"


def _started(got: Result) -> None:
    assert got.code == 0, got
    assert "SchoolFleet demo is running" in got.out, got.out
    assert "not scheduled" not in got.err and "not every device" not in got.err, got.err


def test_demo_demo_stop_demo_stop(demo: Demo) -> None:
    first = demo.make("demo")
    _started(first)
    status = demo.ctl("status", "--json")
    assert status.code == 0 and status.json()["totals"]["online"] == DEVICES, status
    # The README's examples, as written, against the demo.
    listed = demo.ctl("devices", "list", "--school", "school-1001", "--kind", "panel")
    assert listed.code == 0 and "panel-1001-101" in listed.out, listed
    launch = demo.ctl(
        "lessons",
        "launch",
        "--school",
        "school-1001",
        "--room",
        "room-101",
        "https://lessons.example.edu/7b-maths",
    )
    assert launch.code == 0, launch
    for argv in (
        ["lessons", "today", "--school", "school-1001"],
        ["enroll", "token", "list", "--school", "school-1001"],
        ["devices", "show", "panel-1001-101", "--json"],
    ):
        assert demo.ctl(*argv).code == 0, argv
    typo = demo.ctl("devices", "list", "--school", "1001")
    assert (typo.code, typo.err) == (
        4,
        "schoolctl: no school '1001'; schools: school-1001, school-1002\n",
    ), typo
    pids = demo.pids()
    assert len(pids) == DEVICES + 1 and all(_running(p) for p in pids.values())

    again = demo.make("demo")
    assert again.code == 0, again
    assert again.out.startswith("the demo is already running"), again.out
    assert "schoolctl whoami" in again.out
    assert demo.pids() == pids, "a second start starts nothing"

    # One device already gone: it is not counted as stopped.
    os.kill(pids["panel-1001-102"], 15)
    wait_until(lambda: not _running(pids["panel-1001-102"]), 15, "panel-1001-102 to stop")
    stopped = demo.make("demo-stop")
    assert (stopped.code, stopped.out) == (0, f"stopped {DEVICES} demo processes\n"), stopped
    assert not any(_running(p) for p in pids.values())
    twice = demo.make("demo-stop")
    assert (twice.code, twice.out) == (0, "the demo is not running: nothing to stop\n"), twice

    # Within minutes, with the stored schedule and the launched lesson still ahead.
    _started(demo.make("demo"))
    # Late in the day they run past midnight.
    lessons = [
        x
        for day in ("today", "tomorrow")
        for x in demo.ctl("lessons", "today", "--day", day, "--json").json()
    ]
    rooms = {(x["school_id"], x["room_id"]) for x in lessons if x["state"] == "scheduled"}
    assert len([x for x in lessons if x["subject"] == "maths"]) == 6, lessons
    assert ("school-1001", "room-101") in rooms
    final = demo.make("demo-stop")
    assert final.out == f"stopped {DEVICES + 1} demo processes\n", final


def test_a_failed_start_stops_what_it_started_and_reset_forgets(demo: Demo) -> None:
    # The metrics port taken: the controller cannot start.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", demo.port + 1))
        taken.listen()
        failed = demo.make("demo")
        assert failed.code != 0, failed
        assert "the controller did not start" in failed.err, failed.err
        assert "Traceback" not in failed.err
        assert demo.pids() == {}
    _started(demo.make("demo"))
    who = demo.ctl("whoami")
    assert who.code == 0, who
    reset = demo.make("demo-reset")
    assert reset.code == 0 and "data is gone" in reset.out, reset
    assert not demo.folder.exists()
    assert demo.ctl("status").code == 6, "no login after a reset"
    _started(demo.make("demo"))
    assert demo.ctl("status", "--json").json()["totals"]["online"] == DEVICES
