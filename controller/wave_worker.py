"""A rollout wave in a process of its own.

ansible-runner starts ansible-playbook with pexpect, which forks the calling process.
Forked from the controller, the child inherits gRPC's running threads' state, and gRPC's
fork handlers sometimes made it fail before ansible-playbook started (seen here: "no
result from ansible", with gRPC's epoll error as the run's only output). So each wave
runs in a fresh interpreter that has never loaded gRPC, started with subprocess (which
execs at once); the job goes in on stdin and the results come back on stdout as JSON.
Running Ansible's event handling there also keeps it off the controller's GIL.

Cancelling is SIGTERM to the worker: it stops the wave's ansible processes and still
answers. The worker also asks the kernel for SIGTERM if the controller dies, so a
killed controller leaves no wave running on.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from controller.rollout_runner import RunnerSettings, WaveJob, WaveRun, run_wave
from inventory.rollouts import HostOutcome, HostResult

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# How long a worker gets to stop its wave after SIGTERM before it is killed.
_STOP_GRACE = 30.0


def _job_to_json(job: WaveJob) -> str:
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
        }
    )


def _job_from_json(text: str) -> WaveJob:
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
    )
    return WaveJob(
        playbook=Path(raw["playbook"]),
        inventory=raw["inventory"],
        hosts=raw["hosts"],
        work_dir=Path(raw["work_dir"]),
        settings=settings,
        extra_vars=raw["extra_vars"],
        wave=raw["wave"],
        schools=raw["schools"],
    )


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


def run_wave_isolated(job: WaveJob, cancel: threading.Event) -> WaveRun:
    """Runs ``job`` in a worker process; blocking (call it in a thread). Setting
    ``cancel`` stops the wave; the answer then has the hosts it finished."""
    started = time.monotonic()
    log_path = job.work_dir.with_name(job.work_dir.name + ".log")
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with log_path.open("ab") as errors:
        worker = subprocess.Popen(
            [sys.executable, "-m", "controller.wave_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    assert worker.stdin is not None
    assert worker.stdout is not None
    with contextlib.suppress(BrokenPipeError):
        worker.stdin.write(_job_to_json(job).encode())
        worker.stdin.close()
    reader = _Reader(worker.stdout)
    signalled_at: float | None = None
    while worker.poll() is None:
        if cancel.is_set() and signalled_at is None:
            worker.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
        if signalled_at is not None and time.monotonic() - signalled_at > _STOP_GRACE:
            worker.kill()
        time.sleep(0.2)
    out = reader.result()
    if worker.returncode == 0 and out:
        return _run_from_json(out)
    why = f"the wave's worker exited {worker.returncode}; see {log_path}"
    log.error("wave=%s %s", job.wave, why)
    outcome = HostOutcome.CANCELLED if cancel.is_set() else HostOutcome.FAILED
    results = {
        h: HostResult(h, job.schools.get(h, ""), job.wave, outcome, "", why) for h in job.hosts
    }
    return WaveRun("failed", None, results, time.monotonic() - started, job.work_dir, why)


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


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    job = _job_from_json(sys.stdin.read())
    run = run_wave(job, stop.is_set)
    sys.stdout.write(_run_to_json(run))


if __name__ == "__main__":
    main()
