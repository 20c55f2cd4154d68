"""What the controller needs from a store for schools' uplink checks."""

from __future__ import annotations

from typing import Protocol

from inventory.uplink import UplinkCheck


class UplinkStore(Protocol):
    """Uplink checks: at most one running per school, and each school's latest."""

    def start_uplink_check(
        self, check: UplinkCheck, stale_before: float, since: float | None = None
    ) -> bool:
        """Records ``check`` as running, unless a check of its school started at or
        after ``stale_before`` is still running, or (given ``since``, the schedule's
        slot) any check of its school started at or after ``since``: of controllers
        claiming one slot, one measures, even if its check ended before another looked.
        Says whether it was recorded."""

    def finish_uplink_check(
        self,
        school_id: str,
        started_at: float,
        received: int,
        seconds: float | None,
        mbps: float | None,
        error: str,
    ) -> UplinkCheck | None:
        """Ends a running check with its measurement, or with ``error``; None if it is
        not running (it ended already, or never started)."""

    def expire_uplink_checks(self, started_before: float, error: str) -> int:
        """Fails the checks started before ``started_before`` still running (their
        device never answered, or their controller stopped); returns how many."""

    def prune_uplink_checks(self, started_before: float) -> int:
        """Forgets checks started before ``started_before``; returns how many."""

    def uplink_last_started(self) -> dict[str, float]:
        """When each school's latest check started."""

    def latest_uplink_checks(
        self,
        school_id: str | None = None,
        schools: frozenset[str] | None = None,
        *,
        measured: bool = False,
    ) -> list[UplinkCheck]:
        """Each school's latest check (``measured``: its latest with a measurement), by
        school id; of one school, or of ``schools`` (None: every school)."""

    def uplink_failures(self) -> dict[str, int]:
        """Per school with checks: its failed checks since its latest measurement (all
        of them if it has none; 0 when the latest finished check measured)."""
