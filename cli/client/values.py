"""Values schoolctl's client answers with where inventory/ has none that fits: plain
frozen dataclasses, so that commands and renderers import them without gRPC."""

from __future__ import annotations

from dataclasses import dataclass

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
