"""What the fleet needs from a store: devices, whether their stream is up, their
latest health and report, what they answered.

Times are Unix seconds from the controller's clock and are passed in, so that the
status rule (online while the stream is up and the last heartbeat is within the
device's deadline) is evaluated at a ``now`` the caller chooses.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.store.rows import AgentRow, StoredLessonEvent
from inventory.model import (
    CommandOutcome,
    Condition,
    DeviceIdentity,
    DeviceKind,
    DeviceRecord,
    DeviceStatus,
    KindCount,
    SchoolReports,
)
from inventory.rollouts import Selector


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """Filters for listing devices; None matches everything. Pages by device id."""

    school_id: str | None = None
    kind: DeviceKind | None = None
    status: DeviceStatus | None = None
    condition: Condition | None = None
    # Only devices of these schools (a caller's scope); None: every school.
    schools: frozenset[str] | None = None
    after_id: str = ""
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class SelectedDevice:
    """A device a rollout's selector matched, and whether it is online now."""

    device_id: str
    school_id: str
    status: DeviceStatus


class DeviceStore(Protocol):
    """Devices: who they are, whether their stream is up, their latest health."""

    def device_connected(
        self, identity: DeviceIdentity, stream_id: int, offline_after: float, now: float
    ) -> int:
        """Records that ``stream_id`` now carries the device; returns its last stored seq."""

    def device_disconnected(self, device_id: str, stream_id: int) -> None:
        """Marks the stream down, unless a newer stream has taken the device over."""

    def reset_streams(self, ids: range | None = None) -> int:
        """Marks the streams whose ids are in ``ids`` down (this controller's, when it
        stops), or every stream (a controller alone on its store, at start-up: none
        survive a restart); returns how many."""

    def record_messages(self, rows: Sequence[AgentRow]) -> list[StoredLessonEvent]:
        """Stores a batch in order in one transaction; rows at or below a device's last
        seq are duplicates and change nothing. A seq that skips numbers counts the
        skipped ones as the device's gaps. Returns the lesson events stored now."""

    def command_results(self, device_id: str, limit: int) -> list[CommandOutcome]:
        """The device's latest command results, newest first."""

    def list_devices(self, query: DeviceQuery, now: float) -> list[DeviceRecord]:
        """Devices matching ``query``, ordered by id."""

    def get_device(self, device_id: str, now: float) -> DeviceRecord | None:
        """One device with its latest command results, or None."""

    def select_devices(
        self, selector: Selector, schools: frozenset[str] | None, now: float
    ) -> list[SelectedDevice]:
        """The devices ``selector`` matches within ``schools`` (None: every school), by id,
        in one query."""

    def devices_by_id(self, device_ids: Collection[str], now: float) -> list[DeviceRecord]:
        """The registry's records of these devices (unknown ids are left out), by id."""

    def fleet_counts(self, now: float, school_id: str | None = None) -> list[KindCount]:
        """Online and offline counts per school and kind."""

    def school_reports(self, now: float) -> list[SchoolReports]:
        """Per school: online devices by verdict, messages missing, spool drops."""
