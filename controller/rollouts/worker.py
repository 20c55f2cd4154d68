"""The controller's side of a rollout's wave worker (controller/rollouts/wave_worker.py): starts
it as Ansible's OS user, hands it each wave, stops a wave on cancel, and turns a worker
that died into failed hosts with the reason.

One worker serves a rollout's waves one after another, so a wave no longer pays for an
interpreter's start and its imports. The engine closes it when the rollout stops
driving (done, paused, halted, aborted, shutdown); a worker left idle ends by itself
and the next wave starts a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from controller.errors import RolloutRefused
from controller.rollouts.os_user import drop_argv, find_os_user, worker_env
from controller.rollouts.runner import (
    RunnerSettings,
    WaveJob,
    WaveRun,
    stop_control_masters,
    stop_orphaned_wave,
)
from controller.rollouts.wave_worker import DEFAULT_IDLE, failed_run
from controller.rollouts.worker_protocol import cancel_line, job_line, logged_through, run_from

log = logging.getLogger(__name__)

# How long a worker gets to stop its wave after a cancel before it is killed.
_STOP_GRACE = 30.0
_POLL = 0.2
# Longest wait, after a job's answer, for the last of its log lines.
_LOG_WAIT = 5.0
# A worker idle for more than this share of its idle time is replaced before a job
# (it might end while the job is on its way).
_FRESH_SHARE = 0.5
# Workers are started from this one thread, alive as long as the controller: the kernel
# sends a worker its parent-death signal when the *thread* that started it ends, and
# a wave may run in any thread.
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="wave-worker-spawn")


def worker_command(os_user: str, argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
    """``argv`` and its environment, dropped to ``os_user`` (None: this process's)."""
    if not os_user:
        return argv, None
    user = find_os_user(os_user)
    return drop_argv(user, argv), worker_env(user)


def ssh_files(settings: RunnerSettings) -> dict[str, str]:
    """The key and known hosts the wave uses, read here (as the controller) for the
    worker, which cannot read the controller's files."""
    ssh = {"known_hosts": settings.known_hosts.read_text(encoding="utf-8")}
    if settings.private_key_file is not None:
        ssh["private_key"] = settings.private_key_file.read_text(encoding="utf-8")
    return ssh


class RolloutWorker:
    """One warm worker process for a rollout's waves. ``run`` is blocking (call it in a
    thread); one wave at a time."""

    def __init__(self, os_user: str, idle: float = DEFAULT_IDLE) -> None:
        self._os_user = os_user
        self._idle = idle
        self._proc: subprocess.Popen[bytes] | None = None
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._log_lock = threading.Lock()
        self._log: IO[bytes] | None = None
        # The last job whose log lines have all been copied (worker_protocol's log end).
        self._logged = threading.Condition(self._log_lock)
        self._logged_through = 0
        self._last_used = 0.0
        self._next_id = 0
        self._readers: list[threading.Thread] = []

    @property
    def pid(self) -> int | None:
        """The worker process's pid while one runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def run(self, job: WaveJob, cancel: threading.Event, log_path: Path) -> WaveRun:
        """Runs ``job`` in the worker (started if none runs); setting ``cancel`` stops the
        wave, and the answer then has the hosts it finished. The worker's log lines for
        this wave go to ``log_path``."""
        started = time.monotonic()
        try:
            payload = ssh_files(job.settings)
        except OSError as exc:
            why = f"the wave's SSH files cannot be read: {exc}"
            return failed_run(job, cancel.is_set(), started, why)
        try:
            proc = self._ready()
        except RolloutRefused as exc:
            return failed_run(job, cancel.is_set(), started, str(exc))
        except OSError as exc:
            return failed_run(job, cancel.is_set(), started, f"no wave worker: {exc}")
        self._log_to(log_path)
        self._next_id += 1
        job_id = self._next_id
        if not self._send(proc, job_line(job_id, job, payload)):
            return self._lost(proc, job, cancel, started, log_path)
        cancelled_at: float | None = None
        while True:
            if cancel.is_set() and cancelled_at is None:
                cancelled_at = time.monotonic()
                self._send(proc, cancel_line(job_id))
            if cancelled_at is not None and time.monotonic() - cancelled_at > _STOP_GRACE:
                log.error("wave=%s worker pid=%d ignored the cancel: killed", job.wave, proc.pid)
                self.close(grace=0)
            try:
                answer = self._answers.get(timeout=_POLL)
            except queue.Empty:
                continue
            if answer is None:  # the worker's stdout ended: it is gone
                return self._lost(proc, job, cancel, started, log_path)
            if answer.get("id") == job_id:
                self._last_used = time.monotonic()
                with self._logged:
                    self._logged.wait_for(lambda: self._logged_through >= job_id, _LOG_WAIT)
                return run_from(answer["run"])

    def close(self, grace: float = _STOP_GRACE) -> None:
        """Ends the worker: the end of its stdin stops a running wave and ends it; after
        ``grace`` seconds it is signalled, then killed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(PermissionError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(PermissionError):
                    proc.kill()
                proc.wait(5)
        # The readers see the pipes' end once the worker is gone; then they are closed.
        for reader in self._readers:
            reader.join(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self._log_to(None)

    def _ready(self) -> subprocess.Popen[bytes]:
        """The running worker, or a fresh one if it has ended or idled too long."""
        proc = self._proc
        stale = time.monotonic() - self._last_used > self._idle * _FRESH_SHARE
        if proc is not None and proc.poll() is None and not stale:
            return proc
        self.close(grace=5)
        argv, env = worker_command(
            self._os_user,
            [sys.executable, "-m", "controller.rollouts.wave_worker", "--idle", f"{self._idle:g}"],
        )
        proc = _SPAWNER.submit(
            subprocess.Popen,
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # The controller's working folder may be closed to the worker's user.
            cwd="/",
        ).result()
        self._proc, self._last_used = proc, time.monotonic()
        self._answers = queue.Queue()
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._readers = [
            threading.Thread(
                target=self._read_answers, args=(proc.stdout, self._answers), daemon=True
            ),
            threading.Thread(target=self._copy_log, args=(proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        log.info("wave worker pid=%d started as %s", proc.pid, self._os_user or "the controller")
        return proc

    def _send(self, proc: subprocess.Popen[bytes], line: bytes) -> bool:
        try:
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def _lost(
        self,
        proc: subprocess.Popen[bytes],
        job: WaveJob,
        cancel: threading.Event,
        started: float,
        log_path: Path,
    ) -> WaveRun:
        """The worker ended without answering: every host of the wave fails (or, when
        the wave was being cancelled, is cancelled) with the worker's exit status."""
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(5)
        self.close(grace=0)
        stop_wave_as(self._os_user, job.work_dir)
        why = f"the wave's worker ended (exit {code}) before it answered; see {log_path}"
        return failed_run(job, cancel.is_set(), started, why)

    @staticmethod
    def _read_answers(stream: IO[bytes], answers: queue.Queue[dict[str, Any] | None]) -> None:
        for line in stream:
            try:
                answers.put(json.loads(line))
            except ValueError:
                log.error("the wave worker wrote a line that is not JSON: %.200r", line)
        answers.put(None)

    def _copy_log(self, stream: IO[bytes]) -> None:
        """The worker's log lines, into the log of the wave it is running."""
        for line in stream:
            with self._log_lock:
                done = logged_through(line)
                if done is not None:
                    self._logged_through = done
                    self._logged.notify_all()
                elif self._log is not None:
                    self._log.write(line)
                    self._log.flush()

    def _log_to(self, path: Path | None) -> None:
        with self._log_lock:
            if self._log is not None:
                self._log.close()
                self._log = None
            if path is not None:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._log = path.open("ab")


def stop_masters_as(os_user: str, control_path_dir: Path) -> None:
    """Stops the ssh masters in ``control_path_dir`` and removes it, as ``os_user`` (whose
    sockets and processes they are) when there is one."""
    if not os_user:
        stop_control_masters(control_path_dir)
        shutil.rmtree(control_path_dir, ignore_errors=True)
        return
    _as_user(os_user, "--stop-masters", control_path_dir)


def stop_wave_as(os_user: str, work_dir: Path) -> None:
    """Stops what is left of the wave in ``work_dir`` once its worker has gone (its
    ansible-playbook would finish the wave unseen), as ``os_user``."""
    if not os_user:
        stop_orphaned_wave(work_dir)
        return
    _as_user(os_user, "--stop-wave", work_dir)


def _as_user(os_user: str, flag: str, path: Path) -> None:
    """``python -m controller.rollouts.wave_worker FLAG PATH`` as ``os_user``: only that user may
    signal its processes when the controller is not root."""
    try:
        argv, env = worker_command(
            os_user, [sys.executable, "-m", "controller.rollouts.wave_worker", flag, str(path)]
        )
    except RolloutRefused as exc:
        log.warning("%s %s not done: %s", flag, path, exc)
        return
    done = subprocess.run(argv, env=env, cwd="/", capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        log.warning("%s %s failed: %s", flag, path, done.stderr[-500:])
