"""A school's uplink checks: one of its devices fetches a sized payload from the
controller, and the throughput it saw is the school's measured uplink."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class UplinkState(enum.StrEnum):
    """Where a check is."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class UplinkCheck:
    """One check of one school's uplink, from one device."""

    school_id: str
    started_at: float
    device_id: str
    # Asked for while the check runs; received once it has a measurement (a slow
    # uplink is measured by what arrived before the deadline).
    bytes: int
    # Set with a measurement: seconds from the request to the last byte.
    seconds: float | None = None
    mbps: float | None = None
    # Why it failed; empty otherwise.
    error: str = ""

    @property
    def state(self) -> UplinkState:
        if self.error:
            return UplinkState.FAILED
        return UplinkState.RUNNING if self.mbps is None else UplinkState.OK


def mbps(received: int, seconds: float) -> float:
    """Megabits per second (10^6 bits, as uplinks are sold)."""
    return received * 8 / seconds / 1e6
