"""What a device's stream brings, on its way to the store: heartbeats, command
results and lesson events share the device's one sequence and are stored in one
transaction per batch (controller/fleet/writer.py)."""

from __future__ import annotations

from dataclasses import dataclass

from inventory.lessons import LessonEvent
from inventory.model import DeviceReport, Health


@dataclass(frozen=True, slots=True)
class HeartbeatRow:
    """One heartbeat on its way to the store."""

    device_id: str
    seq: int
    received_at: float
    health: Health
    report: DeviceReport | None = None


@dataclass(frozen=True, slots=True)
class CommandResultRow:
    """What a device answered to a command, on its way to the store."""

    device_id: str
    seq: int
    received_at: float
    command_id: str
    # ok, failed or unsupported
    status: str
    message: str
    finished_at: float


@dataclass(frozen=True, slots=True)
class LessonEventRow:
    """What a panel said of a lesson, on its way to the store."""

    device_id: str
    seq: int
    received_at: float
    event: LessonEvent


# A device's messages share one sequence, so they are stored in one ordered stream.
AgentRow = HeartbeatRow | CommandResultRow | LessonEventRow


@dataclass(frozen=True, slots=True)
class StoredLessonEvent:
    """A lesson event stored for the first time (a replayed one is not), with what the
    metrics need of its lesson."""

    event: LessonEvent
    school_id: str
    starts_at: float
