"""What the rollout engine needs of the controller's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What the engine needs of the controller's settings."""

    playbooks_dir: Path
    # The controller's own folder of rollouts: each wave's worker log.
    work_dir: Path
    # Where Ansible writes each wave's files, as its OS user: outside the data folder.
    ansible_dir: Path
    zone: ZoneInfo
    batch_estimate: float
    recheck: float
    gate_days: float
    # Lessons that started less than this long ago may still launch: not judged yet.
    lesson_on_time: float
