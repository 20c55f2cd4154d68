"""Rollouts and maintenance windows as schoolctl's client answers with them: plain
frozen dataclasses, one per kind of answer, so that commands and renderers import them
without gRPC. Times are Unix seconds, None where the controller set none."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RolloutRequest:
    """What `schoolctl rollout start` asks for, as the user typed it (amounts and the
    budget as text, extra vars as a JSON object's text; the controller checks them)."""

    playbook: str
    selector: str
    canary: str
    wave_size: str
    max_fail: str
    extra_vars_json: str
    gate_lessons: bool
    dry_run: bool
    include_offline: bool
    # Empty: the controller's rollout_strategy.
    strategy: str


@dataclass(frozen=True, slots=True)
class RolloutWave:
    """A wave: its number (from 1), hosts and failed hosts, and when it ran."""

    wave: int
    hosts: int
    failed: int
    started_at: float | None
    # None while the wave runs.
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class RolloutHost:
    """A host of a rollout and its outcome (pending, running, ok, changed, failed,
    unreachable, cancelled, interrupted, or a newer controller's word)."""

    device_id: str = ""
    school_id: str = ""
    # 0 before the host's turn.
    wave: int = 0
    outcome: str = ""
    task: str = ""
    message: str = ""
    # The failing task's return code, when it had one.
    rc: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    # Only for one host asked for by id: its tasks and the failing task's result (JSON).
    detail_json: str = ""
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class RolloutInfo:
    """A rollout as the controller shows it: its request, state and why, hosts by
    outcome, waves, and (from GetRollout and StartRollout, not in lists) its hosts."""

    rollout_id: int
    playbook: str
    selector: str
    canary: str
    wave_size: str
    max_fail: float
    gate_lessons: bool
    # running, paused, halted, aborted, done, done-unreached (or a newer word).
    state: str
    # Why it halted or was aborted; why pending hosts wait.
    reason: str
    waiting: str
    created_by: str
    created_at: float | None
    updated_at: float | None
    finished_at: float | None
    # Hosts by outcome, in the order the controller sent them.
    counts: dict[str, int]
    waves: tuple[RolloutWave, ...]
    hosts: tuple[RolloutHost, ...]
    extra_vars_json: str
    dry_run: bool
    include_offline: bool
    # Offline at the start and left out: some named, and how many in all.
    offline_skipped: tuple[str, ...]
    offline_skipped_count: int
    # The --max-fail budget: hosts that may fail or be unreachable, and how many have.
    fail_budget: int
    fail_budget_used: int
    strategy: str


@dataclass(frozen=True, slots=True)
class SchoolWindows:
    """A school's maintenance windows (none: any time free of lessons)."""

    school_id: str
    windows: tuple[str, ...]
