"""What the controller and a rollout's wave worker say to each other: one JSON object a
line, each way.

To the worker: ``{"id": N, "job": {...}, "ssh": {...}}`` runs a wave (its SSH key and
known hosts travel in ``ssh``: the worker cannot read the controller's files), and
``{"cancel": N}`` stops wave N. The end of the worker's stdin stops whatever runs and
ends the worker once it has answered. From the worker: ``{"id": N, "run": {...}}``,
one answer a job, cancelled or not.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from controller.rollouts.runner import RunnerSettings, WaveJob, WaveRun
from inventory.rollouts import HostOutcome, HostResult


def job_line(job_id: int, job: WaveJob, ssh: dict[str, str]) -> bytes:
    """The line that asks the worker to run ``job``."""
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(job.settings).items()}
    body = {
        "playbook": str(job.playbook),
        "inventory": job.inventory,
        "hosts": list(job.hosts),
        "work_dir": str(job.work_dir),
        "settings": settings,
        "extra_vars": dict(job.extra_vars),
        "wave": job.wave,
        "schools": dict(job.schools),
    }
    return _line({"id": job_id, "job": body, "ssh": ssh})


def cancel_line(job_id: int) -> bytes:
    """The line that stops job ``job_id`` if it still runs."""
    return _line({"cancel": job_id})


def job_from(raw: dict[str, Any]) -> WaveJob:
    """The job of a ``job`` message's body."""
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
        strategy=s["strategy"],
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


def answer_line(job_id: int, run: WaveRun) -> bytes:
    """The worker's answer to job ``job_id``."""
    results = [{**asdict(r), "outcome": r.outcome.value} for r in run.results.values()]
    body = {
        "status": run.status,
        "rc": run.rc,
        "results": results,
        "duration": run.duration,
        "artifact_dir": str(run.artifact_dir),
        "error": run.error,
    }
    return _line({"id": job_id, "run": body})


def run_from(raw: dict[str, Any]) -> WaveRun:
    """The wave's run of an answer's body."""
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


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


# Written to the worker's stderr after a job's last log line and before its answer
# (stdout): the two pipes are read by two threads, so the controller waits for this
# line to know the job's log is all in that wave's log file.
_LOG_END = b"\x1ejob-end "


def log_end_line(job_id: int) -> bytes:
    return _LOG_END + str(job_id).encode() + b"\n"


def logged_through(line: bytes) -> int | None:
    """The job id a log-end line names, or None for an ordinary log line."""
    if not line.startswith(_LOG_END):
        return None
    try:
        return int(line[len(_LOG_END) :])
    except ValueError:
        return None
