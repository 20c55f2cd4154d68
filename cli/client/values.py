"""Values schoolctl's client answers with where inventory/ has none that fits: plain
frozen dataclasses, so that commands and renderers import them without gRPC."""

from __future__ import annotations

from dataclasses import dataclass

from inventory.lessons import Lesson
from inventory.model import KindCount
from inventory.uplink import UplinkCheck


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """What `schoolctl status` shows: device counts, and the schools whose latest
    uplink measurement is under the target."""

    counts: list[KindCount]
    computed_at: float
    uplink_target_mbps: float
    slow_uplinks: list[UplinkCheck]


@dataclass(frozen=True, slots=True)
class SchoolUplink:
    """A school's latest check, and its latest measurement (None if it has none)."""

    school_id: str
    latest: UplinkCheck
    measured: UplinkCheck | None


@dataclass(frozen=True, slots=True)
class ImportAnswer:
    """What the controller said of an import's rows, over every part they were sent in:
    its counts by name (added, updated, ...) and the rows it refused, (line, why)."""

    counts: dict[str, int]
    refused: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class LessonInfo:
    """A lesson as the controller lists it: its id (the controller's), the lesson, its
    state (scheduled, dispatched, held, partly-held, failed or no-device) and why, and
    its panels' count of each answer."""

    lesson_id: str
    lesson: Lesson
    state: str
    reason: str
    dispatched_at: float | None
    panels: int
    launched: int
    failed: int


@dataclass(frozen=True, slots=True)
class AnsibleAccess:
    """How Ansible reaches the caller's devices as the controller's rollouts do: its SSH
    user, the devices' Python, and the known_hosts lines of those devices' addresses."""

    ssh_user: str
    python_interpreter: str
    known_hosts: tuple[str, ...]
