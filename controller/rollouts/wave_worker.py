"""A rollout's waves in a process of their own.

ansible-runner starts ansible-playbook with pexpect, which forks the calling process.
Forked from the controller, the child inherits gRPC's running threads' state, and gRPC's
fork handlers sometimes made it fail before ansible-playbook started (seen here: "no
result from ansible", with gRPC's epoll error as the run's only output). So waves run
in an interpreter that has never loaded gRPC, started with subprocess (which execs at
once). Running Ansible's event handling there also keeps it off the controller's GIL.

One worker serves one rollout, wave after wave (controller/rollouts/worker.py starts
it): jobs come in on stdin and answers go out on stdout, a JSON line each
(controller/rollouts/worker_protocol.py). Kept warm across waves, it saves each wave the
interpreter's start and its imports. It ends when its stdin ends, and by itself after
``--idle`` seconds without a job.

The worker runs as Ansible's own OS user (``rollout_os_user``, see
controller/rollouts/os_user.py), which cannot read the controller's data folder: the SSH
key and the known hosts come in each job, and the worker writes them into a folder of
its own beside the wave's, removed when the wave ends.

Cancelling is a cancel line, or the end of stdin (a controller that is not root may
not signal another user's process; SIGTERM still works where it may): the worker stops
the wave's ansible processes and still answers. A killed controller closes the pipe
too, and the worker asks the kernel for SIGTERM when it dies, so no wave runs on.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.rollouts import mitogen_muxes
from controller.rollouts.runner import (
    WaveJob,
    WaveRun,
    run_wave,
    stop_control_masters,
    stop_orphaned_wave,
)
from controller.rollouts.worker_protocol import answer_line, job_from, log_end_line
from controller.rollouts.zygote import Launcher, start_zygote
from inventory.rollouts import HostOutcome, HostResult

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# A worker no one gives a job for this long ends (the controller starts another).
DEFAULT_IDLE = 300.0


def failed_run(job: WaveJob, cancelled: bool, started: float, why: str) -> WaveRun:
    """Every host of the wave failed (or cancelled) for ``why``, the worker's trouble."""
    log.error("wave=%s %s", job.wave, why)
    outcome = HostOutcome.CANCELLED if cancelled else HostOutcome.FAILED
    results = {
        h: HostResult(h, job.schools.get(h, ""), job.wave, outcome, "", why) for h in job.hosts
    }
    return WaveRun("failed", None, results, time.monotonic() - started, job.work_dir, why)


def _own_dir(path: Path) -> None:
    """``path`` made (0700) or found as this user's own folder that no one else may
    enter: ssh's control sockets there must be this user's alone."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise OSError(f"{path} is not a folder of this user's alone (mode 0700)")


def _with_ssh_files(job: WaveJob, ssh: dict[str, str], folder: Path) -> WaveJob:
    """The job with its key and known hosts written (0600) in ``folder``."""
    folder.mkdir(mode=0o700, parents=True)
    known = _write_private(folder / "known_hosts", ssh["known_hosts"])
    key = None
    if "private_key" in ssh:
        key = _write_private(folder / "id_key", ssh["private_key"])
    return replace(job, settings=replace(job.settings, known_hosts=known, private_key_file=key))


def _write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


class _Inbox:
    """Reads the controller's lines in a thread: jobs queue up for the main thread,
    cancels are noted at once, and the end of stdin (or SIGTERM) stops everything."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cancelled: set[int] = set()
        self.closed = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.jobs.put(None)

    def cancelled(self, job_id: int) -> Callable[[], bool]:
        return lambda: self.closed or job_id in self._cancelled

    def _read(self) -> None:
        # The raw descriptor: a daemon thread blocked in sys.stdin's buffer would hold
        # its lock at the interpreter's exit (a fatal error).
        pending = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(0, 65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._take(line)
        self.close()

    def _take(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            if "cancel" in message:
                self._cancelled.add(int(message["cancel"]))
            else:
                self.jobs.put({"id": int(message["id"]), **message})
        except (ValueError, KeyError, TypeError) as exc:
            log.error("a line from the controller is not a job or a cancel: %s", exc)


def _run(
    message: dict[str, Any], cancelled: Callable[[], bool], launcher: Launcher | None
) -> WaveRun:
    started = time.monotonic()
    try:
        job, ssh = job_from(message["job"]), message["ssh"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"job {message.get('id')} is malformed: {exc!r}") from exc
    # Left by an earlier controller whose rollout ids started again: kept, not reused.
    folder, attempt = job.work_dir, 1
    while job.work_dir.exists():
        attempt += 1
        job = replace(job, work_dir=folder.with_name(f"{folder.name}.{attempt}"))
    # The same paths for every wave of the rollout: they are in Ansible's environment,
    # which the zygote's forks share (controller/rollouts/zygote.py).
    ssh_dir = job.work_dir.parent / "ssh"
    shutil.rmtree(ssh_dir, ignore_errors=True)
    try:
        _own_dir(job.settings.control_path_dir)
        job = _with_ssh_files(job, ssh, ssh_dir)
    except OSError as exc:
        shutil.rmtree(ssh_dir, ignore_errors=True)
        return failed_run(job, cancelled(), started, f"the wave cannot start: {exc}")
    try:
        return run_wave(job, cancelled, launcher=launcher)
    finally:
        if launcher is not None and cancelled():
            # Mitogen's connections outlive a stopped ansible-playbook in the zygote.
            mitogen_muxes.stop_connections(launcher.pid)
        shutil.rmtree(ssh_dir, ignore_errors=True)


def serve(idle: float) -> None:
    """Runs jobs from stdin one after another until stdin ends or ``idle`` seconds pass
    without one."""
    inbox = _Inbox()
    signal.signal(signal.SIGTERM, lambda *_: inbox.close())
    with _zygote() as launcher:
        inbox.start()
        _serve(inbox, idle, launcher)


@contextlib.contextmanager
def _zygote() -> Iterator[Launcher | None]:
    """The zygote for this worker's waves (forked now, before any thread), stopped at
    the end; None if it cannot start (each wave then starts Ansible afresh)."""
    folder = Path(tempfile.mkdtemp(prefix="sf-zy-", dir="/tmp"))
    launcher = None
    try:
        try:
            launcher = start_zygote(folder)
        except OSError as exc:
            log.warning("no zygote: every wave starts Ansible afresh: %s", exc)
        yield launcher
    finally:
        if launcher is not None:
            with contextlib.suppress(OSError):
                os.kill(launcher.pid, signal.SIGTERM)
                os.waitpid(launcher.pid, 0)
        shutil.rmtree(folder, ignore_errors=True)


def _serve(inbox: _Inbox, idle: float, launcher: Launcher | None) -> None:
    while not inbox.closed:
        try:
            message = inbox.jobs.get(timeout=idle)
        except queue.Empty:
            log.info("no job for %g s: the worker ends", idle)
            return
        if message is None:
            return
        job_id = message["id"]
        try:
            run = _run(message, inbox.cancelled(job_id), launcher)
        except ValueError as exc:
            # Our own bug: ending says so to the controller, which fails the wave.
            log.error("%s", exc)
            return
        sys.stderr.flush()
        sys.stderr.buffer.write(log_end_line(job_id))
        sys.stderr.buffer.flush()
        sys.stdout.buffer.write(answer_line(job_id, run))
        sys.stdout.buffer.flush()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if sys.argv[1:2] == ["--stop-masters"]:
        folder = Path(sys.argv[2])
        stop_control_masters(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return
    if sys.argv[1:2] == ["--stop-wave"]:
        stopped = stop_orphaned_wave(Path(sys.argv[2]))
        log.info("stopped %d ansible-playbook of the wave in %s", stopped, sys.argv[2])
        return
    idle = DEFAULT_IDLE
    if sys.argv[1:2] == ["--idle"]:
        idle = float(sys.argv[2])
    # The signal comes when the thread that started this process ends (the kernel's
    # rule): the controller starts workers from a thread that lives as long as it does.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    serve(idle)


if __name__ == "__main__":
    main()
