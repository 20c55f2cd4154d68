"""The controller's side of the lesson fan-out benchmark: its settings, a central-ops
user, the schedule (imported with the real ``schoolctl``), and what the store and the
log say afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.lessons_loadgen import panel_place
from bench.procs import ROOT, RunFailed, Target, stop_process

BIN = Path(sys.executable).parent
HEADER = "school,room,start,end,class,subject,teacher,content_url,remote\n"
LESSON_SECONDS = 45 * 60
# schoolctl packs up to 512 KiB of rows into one request (cli/client/parts.py); the
# schedule goes in as several files, as schools would send it.
ROWS_PER_FILE = 500
# The controller's settings: launches go out at the start itself (no lead), so the
# figure is the fan-out itself; the production heartbeat interval.
SETTINGS = {
    "lesson_lead": "0",
    "content_hosts": '["lessons.example.edu"]',
    "heartbeat_interval": "30",
}
# How often the round looks whether every answer is in: the resolution of "all stored".
POLL_SECONDS = 0.02
# Lines of the controller's log (common/logs.py) that say a lesson went out.
_DISPATCHED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ lessons dispatched ")


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def write_schedules(folder: Path, panels: int, start: float) -> list[Path]:
    """One 45-minute lesson in every panel's room, all starting at ``start``, in files of
    at most ``ROWS_PER_FILE`` rows."""
    rows = []
    for i in range(panels):
        _, school, room = panel_place(i)
        url = f"https://lessons.example.edu/{school}/{room}/maths"
        rows.append(
            f"{school},{room},{_iso(start)},{_iso(start + LESSON_SECONDS)},"
            f"7B,maths,Ivanova,{url},no\n"
        )
    files = []
    for part, first in enumerate(range(0, panels, ROWS_PER_FILE), 1):
        path = folder / f"lessons-{part:02d}.csv"
        path.write_text(HEADER + "".join(rows[first : first + ROWS_PER_FILE]))
        files.append(path)
    return files


def child_env() -> dict[str, str]:
    """Our environment, the repository importable, none of our controller settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOLFLEET_CONTROLLER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


async def _run(argv: list[str], within: float, env: dict[str, str]) -> tuple[int, str, str]:
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
    return proc.returncode or 0, out.decode(), err.decode()


async def create_user(workdir: Path) -> str:
    """A central-ops user on the round's database, as an operator makes the first one."""
    (workdir / "controller.toml").write_text("")
    code, out, err = await _run(
        [
            str(BIN / "schoolfleet-controller"),
            "users",
            "create",
            "bench",
            "--role",
            "central-ops",
            f"--config={workdir / 'controller.toml'}",
            f"--database=sqlite:{workdir / 'controller.db'}",
            "--json",
        ],
        60.0,
        child_env(),
    )
    if code != 0:
        raise RunFailed(f"users create failed ({code}): {err.strip()}")
    token: str = json.loads(out)["token"]
    return token


async def import_schedules(target: Target, token: str, files: list[Path], panels: int) -> float:
    """Runs ``schoolctl lessons import`` on each file in turn; returns the seconds it took."""
    env = {**child_env(), "SCHOOLCTL_TOKEN": token, "SCHOOLCTL_CONFIG": os.devnull}
    started = time.monotonic()
    argv = [str(BIN / "schoolctl"), "--controller", target.address, "--timeout", "60"]
    added = 0
    for path in files:
        code, out, err = await _run([*argv, "lessons", "import", str(path), "--json"], 120.0, env)
        if code != 0:
            raise RunFailed(f"schoolctl lessons import {path.name}: exit {code}: {err[-1000:]}")
        added += json.loads(out)["added"]
    if added != panels:
        raise RunFailed(f"schoolctl lessons import added {added} lessons, not {panels}")
    return time.monotonic() - started


def wait_launched(
    database: Path, panels: int, deadline: float, quit: threading.Event
) -> float | None:
    """Polls the store (read-only) until every panel's launch is committed; wall time."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        while time.time() < deadline and not quit.is_set():
            row = conn.execute(
                "SELECT count(*) FROM lesson_panels WHERE launched_at IS NOT NULL"
            ).fetchone()
            if row[0] >= panels:
                return time.time()
            time.sleep(POLL_SECONDS)
    return None


def store_figures(database: Path, start: float) -> tuple[float | None, float | None]:
    """The dispatcher's tick and the last answer read, from the store, after T."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        tick = conn.execute("SELECT min(dispatched_at) FROM lessons").fetchone()[0]
        last = conn.execute(
            "SELECT max(received_at) FROM lesson_events WHERE kind = 'launched'"
        ).fetchone()[0]
    return (
        None if tick is None else tick - start,
        None if last is None else last - start,
    )


def dispatch_log(log_path: Path, start: float) -> tuple[float, float] | None:
    stamps = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = _DISPATCHED.match(line)
        if m:
            stamps.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return (min(stamps) - start, max(stamps) - start) if stamps else None


async def profile(
    stack: contextlib.AsyncExitStack, pid: int, out: Path, seconds: float, start: float
) -> None:
    """py-spy on the controller from T - 1 s for ``seconds``, raw stacks into ``out``."""
    await asyncio.sleep(max(0.0, start - 1.0 - time.time()))
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "py-spy"), "record", f"--pid={pid}", "--rate=250", "--format=raw",
        "--threads", "--idle", "--nonblocking", f"--duration={seconds:g}", f"--output={out}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    stack.push_async_callback(stop_process, proc, 5.0)
