"""What the rollout engine needs of the controller's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.rollouts.slices import SLICE_HOSTS


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
    # A wave is cut into slices of at most this many hosts, each run by whichever
    # controller claims it (controller/rollouts/slices.py).
    slice_hosts: int = SLICE_HOSTS
    # Slices this controller runs at once at most (its first whatever the load, more
    # only while a core is spare).
    slots: int = 1
    # A slice's claim lasts this long by the database's clock and is renewed this
    # often while the slice runs: a dead controller's slice runs again elsewhere
    # within claim_ttl and a look.
    claim_ttl: float = 10.0
    claim_renew: float = 2.0
