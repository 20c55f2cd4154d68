"""A rollout wave in a process of its own.

ansible-runner starts ansible-playbook with pexpect, which forks the calling process.
Forked from the controller, the child inherits gRPC's running threads' state, and gRPC's
fork handlers sometimes made it fail before ansible-playbook started (seen here: "no
result from ansible", with gRPC's epoll error as the run's only output). So each wave
runs in a fresh interpreter that has never loaded gRPC, started with subprocess (which
execs at once); the job goes in on stdin and the results come back on stdout as JSON.
Running Ansible's event handling there also keeps it off the controller's GIL.

The worker runs as Ansible's own OS user (``rollout_os_user``, see
controller/ansible_user.py), which cannot read the controller's data folder: the SSH
key and the known hosts come in the job, and the worker writes them into a folder of
its own beside the wave's, removed when the wave ends.

Cancelling is the end of the worker's stdin (a controller that is not root may not
signal another user's process; SIGTERM still works where it may): the worker stops the
wave's ansible processes and still answers. A killed controller closes the pipe too,
and the worker asks the kernel for SIGTERM when it dies, so no wave runs on.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from controller.ansible_user import drop_argv, find_os_user, worker_env
from controller.errors import RolloutRefused
from controller.rollout_runner import (
    RunnerSettings,
    WaveJob,
    WaveRun,
    run_wave,
    stop_control_masters,
)
from inventory.rollouts import HostOutcome, HostResult

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# How long a worker gets to stop its wave after SIGTERM before it is killed.
_STOP_GRACE = 30.0


def _job_to_json(job: WaveJob, ssh: dict[str, str]) -> str:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(job.settings).items()}
    return json.dumps(
        {
            "playbook": str(job.playbook),
            "inventory": job.inventory,
            "hosts": list(job.hosts),
            "work_dir": str(job.work_dir),
            "settings": settings,
            "extra_vars": dict(job.extra_vars),
            "wave": job.wave,
            "schools": dict(job.schools),
            "ssh": ssh,
        }
    )


def _job_from_json(text: str) -> tuple[WaveJob, dict[str, str]]:
    raw = json.loads(text)
    s = raw["settings"]
    key = s["private_key_file"]
    settings = RunnerSettings(
        forks=s["forks"],
        remote_user=s["remote_user"],
        private_key_file=Path(key) if key else None,
        known_hosts=Path(s["known_hosts"]),
        control_path_dir=Path(s["control_path_dir"]),
        timeout=s["timeout"],
        ssh_timeout=s["ssh_timeout"],
        pipelining=s["pipelining"],
        control_persist=s["control_persist"],
        ansible_bin_dir=Path(s["ansible_bin_dir"]),
        python_interpreter=s["python_interpreter"],
        os_user=s["os_user"],
    )
    job = WaveJob(
        playbook=Path(raw["playbook"]),
        inventory=raw["inventory"],
        hosts=raw["hosts"],
        work_dir=Path(raw["work_dir"]),
        settings=settings,
        extra_vars=raw["extra_vars"],
        wave=raw["wave"],
        schools=raw["schools"],
    )
    return job, raw["ssh"]


def _ssh_files(settings: RunnerSettings) -> dict[str, str]:
    """The key and known hosts the wave uses, read here (as the controller) for the
    worker, which cannot read the controller's files."""
    ssh = {"known_hosts": settings.known_hosts.read_text(encoding="utf-8")}
    if settings.private_key_file is not None:
        ssh["private_key"] = settings.private_key_file.read_text(encoding="utf-8")
    return ssh


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


def _run_to_json(run: WaveRun) -> str:
    results = [{**asdict(r), "outcome": r.outcome.value} for r in run.results.values()]
    return json.dumps(
        {
            "status": run.status,
            "rc": run.rc,
            "results": results,
            "duration": run.duration,
            "artifact_dir": str(run.artifact_dir),
            "error": run.error,
        }
    )


def _run_from_json(text: str) -> WaveRun:
    raw = json.loads(text)
    results = {
        r["device_id"]: HostResult(**{**r, "outcome": HostOutcome(r["outcome"])})
        for r in raw["results"]
    }
    return WaveRun(
        raw["status"],
        raw["rc"],
        results,
        raw["duration"],
        Path(raw["artifact_dir"]),
        raw["error"],
    )


def worker_command(os_user: str, argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
    """``argv`` and its environment, dropped to ``os_user`` (None: this process's)."""
    if not os_user:
        return argv, None
    user = find_os_user(os_user)
    return drop_argv(user, argv), worker_env(user)


def run_wave_isolated(
    job: WaveJob, cancel: threading.Event, log_path: Path | None = None
) -> WaveRun:
    """Runs ``job`` in a worker process, as ``job.settings.os_user``; blocking (call it
    in a thread). Setting ``cancel`` stops the wave; the answer then has the hosts it
    finished. The worker's stderr goes to ``log_path`` (default: beside the work dir)."""
    started = time.monotonic()
    if log_path is None:
        log_path = job.work_dir.with_name(job.work_dir.name + ".log")
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        argv, env = worker_command(
            job.settings.os_user, [sys.executable, "-m", "controller.wave_worker"]
        )
        payload = _job_to_json(job, _ssh_files(job.settings)).encode() + b"\n"
    except RolloutRefused as exc:
        return _failed(job, cancel, started, str(exc))
    except OSError as exc:
        return _failed(job, cancel, started, f"the wave's SSH files cannot be read: {exc}")
    with log_path.open("ab") as errors:
        worker = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
            # The controller's working folder may be closed to the worker's user.
            cwd="/",
        )
    assert worker.stdin is not None
    assert worker.stdout is not None
    with contextlib.suppress(BrokenPipeError):
        worker.stdin.write(payload)
        worker.stdin.flush()
    reader = _Reader(worker.stdout)
    signalled_at: float | None = None
    while worker.poll() is None:
        if cancel.is_set() and signalled_at is None:
            with contextlib.suppress(OSError):
                worker.stdin.close()
            with contextlib.suppress(PermissionError):
                worker.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
        if signalled_at is not None and time.monotonic() - signalled_at > _STOP_GRACE:
            with contextlib.suppress(PermissionError):
                worker.kill()
        time.sleep(0.2)
    with contextlib.suppress(OSError):
        worker.stdin.close()
    out = reader.result()
    if worker.returncode == 0 and out:
        return _run_from_json(out)
    return _failed(
        job, cancel, started, f"the wave's worker exited {worker.returncode}; see {log_path}"
    )


def _failed(job: WaveJob, cancel: threading.Event, started: float, why: str) -> WaveRun:
    """Every host of the wave failed (or cancelled) for ``why``, the worker's trouble."""
    log.error("wave=%s %s", job.wave, why)
    outcome = HostOutcome.CANCELLED if cancel.is_set() else HostOutcome.FAILED
    results = {
        h: HostResult(h, job.schools.get(h, ""), job.wave, outcome, "", why) for h in job.hosts
    }
    return WaveRun("failed", None, results, time.monotonic() - started, job.work_dir, why)


def stop_masters_as(os_user: str, control_path_dir: Path) -> None:
    """Stops the ssh masters in ``control_path_dir`` and removes it, as ``os_user`` (whose
    sockets and processes they are) when there is one."""
    if not os_user:
        stop_control_masters(control_path_dir)
        shutil.rmtree(control_path_dir, ignore_errors=True)
        return
    try:
        argv, env = worker_command(
            os_user,
            [
                sys.executable,
                "-m",
                "controller.wave_worker",
                "--stop-masters",
                str(control_path_dir),
            ],
        )
    except RolloutRefused as exc:
        log.warning("ssh masters in %s not stopped: %s", control_path_dir, exc)
        return
    done = subprocess.run(argv, env=env, cwd="/", capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        log.warning("stopping ssh masters in %s failed: %s", control_path_dir, done.stderr[-500:])


class _Reader:
    """Reads the worker's answer in a thread, so a full pipe never blocks it."""

    def __init__(self, stream: Any) -> None:
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        self._chunks.append(stream.read())

    def result(self) -> str:
        self._thread.join(10)
        return b"".join(self._chunks).decode()


def _stop_on_eof(stop: threading.Event) -> None:
    """The controller closes stdin to cancel (or dies, which closes it too)."""
    # The raw descriptor: a daemon thread blocked in sys.stdin's buffer would hold its
    # lock at the interpreter's exit (a fatal error).
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    stop.set()


def _run(line: str, stop: threading.Event) -> WaveRun:
    job, ssh = _job_from_json(line)
    # Left by an earlier controller whose rollout ids started again: kept, not reused.
    folder, attempt = job.work_dir, 1
    while job.work_dir.exists():
        attempt += 1
        job = replace(job, work_dir=folder.with_name(f"{folder.name}.{attempt}"))
    ssh_dir = job.work_dir.with_name(job.work_dir.name + ".ssh")
    try:
        _own_dir(job.settings.control_path_dir)
        job = _with_ssh_files(job, ssh, ssh_dir)
    except OSError as exc:
        shutil.rmtree(ssh_dir, ignore_errors=True)
        return _failed(job, stop, time.monotonic(), f"the wave cannot start: {exc}")
    try:
        return run_wave(job, stop.is_set)
    finally:
        shutil.rmtree(ssh_dir, ignore_errors=True)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if sys.argv[1:2] == ["--stop-masters"]:
        folder = Path(sys.argv[2])
        stop_control_masters(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    line = sys.stdin.readline()
    threading.Thread(target=_stop_on_eof, args=(stop,), daemon=True).start()
    sys.stdout.write(_run_to_json(_run(line, stop)))


if __name__ == "__main__":
    main()
