"""The processes a demo started, by name and pid in a JSON file, and their stopping by
those pids alone. A pid counts as the demo's only while its program's arguments name
the demo's folder: a pid the system has since given to another program is left alone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

# SIGTERM's patience before SIGKILL: a controller stores what it acked first.
_STOP_SECONDS = 15.0


def spawn(folder: Path, name: str, argv: list[str]) -> int:
    """Starts ``argv`` (naming something in ``folder``, by which it is known as the
    demo's) with its output in folder/NAME.log; its pid."""
    with (folder / f"{name}.log").open("ab") as log:
        # A session of its own: the demo outlives `make` and a Ctrl-C in that terminal.
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    # Popen may return while the kernel is still setting up the new program, its
    # arguments not yet readable: until then the process would not look like ours.
    deadline = time.monotonic() + 2
    while not is_ours(proc.pid, folder) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    return proc.pid


def last_words(folder: Path, name: str) -> str:
    """The last line ``spawn``'s process NAME wrote, shortened: why it exited, mostly."""
    try:
        lines = (folder / f"{name}.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def is_ours(pid: int, folder: Path) -> bool:
    """Whether ``pid`` runs (not a zombie) with an argument inside ``folder``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # A zombie's arguments are empty: it has exited.
    inside = os.fsencode(folder) + b"/"
    return any(arg.startswith(inside) for arg in argv)


class PidFile:
    """``{name: pid}`` of the processes a demo started, whose arguments name ``folder``."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        self.folder = folder

    def recorded(self) -> dict[str, int]:
        try:
            pids: dict[str, int] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return pids

    def record(self, name: str, pid: int) -> None:
        """Adds ``name``, written at once: a start that fails half way is still stopped."""
        self.path.write_text(json.dumps({**self.recorded(), name: pid}))

    def alive(self) -> dict[str, int]:
        """The recorded processes still running, by name."""
        return {name: pid for name, pid in self.recorded().items() if is_ours(pid, self.folder)}

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def stop(pids: list[int], folder: Path) -> None:
    """SIGTERM to each of ``pids`` still ours, together; SIGKILL to any that still runs
    after a while. Returns once none of them runs."""
    alive = [pid for pid in pids if is_ours(pid, folder)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_SECONDS
    while any(is_ours(p, folder) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive:
        if is_ours(pid, folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(is_ours(p, folder) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
