"""What the controller needs from a store for rollouts: the rollouts, their hosts and
waves, the claims that keep a host in one rollout at a time, schools' maintenance
windows, and what the lesson schedule says about rooms and launches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.rollouts.slices import SLICE_HOSTS
from inventory.rollouts import (
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
)

Room = tuple[str, str]


@dataclass(frozen=True, slots=True)
class NewHost:
    device_id: str
    school_id: str


@dataclass(frozen=True, slots=True)
class RolloutQuery:
    """Rollouts, newest first; None matches everything."""

    states: frozenset[RolloutState] | None = None
    # Only rollouts whose hosts are all in these schools (a caller's scope).
    schools: frozenset[str] | None = None
    limit: int = 50


class RolloutStore(Protocol):
    """Rollouts in the store."""

    def create_rollout(
        self,
        spec: RolloutSpec,
        hosts: Sequence[NewHost],
        created_by: str,
        now: float,
        baseline: LessonRates,
    ) -> int:
        """In one transaction: claims every host, stores the rollout (running) and its
        hosts (pending); returns its id. Raises HostsClaimed, storing nothing, if a host
        is in another unfinished rollout (even one another controller is storing at the
        same moment), and StoreError for a host given twice, an id that cannot be
        stored (controller/rollouts/stored_values.py) or a NUL in the spec or creator."""

    def get_rollout(self, rollout_id: int) -> RolloutRecord | None:
        """The rollout with its counts and waves, or None."""

    def list_rollouts(self, query: RolloutQuery) -> list[RolloutRecord]:
        """Rollouts matching ``query``, newest first."""

    def rollout_schools(self, rollout_id: int) -> set[str]:
        """The schools of the rollout's hosts."""

    def rollout_hosts(
        self, rollout_id: int, outcomes: frozenset[HostOutcome] | None = None
    ) -> list[HostResult]:
        """The rollout's hosts (of these outcomes), by wave then device id; pending
        hosts (no wave) last. Without their detail (rollout_host has it)."""

    def rollout_host(self, rollout_id: int, device_id: str) -> HostResult | None:
        """One host of the rollout with its whole stored result (detail included), or
        None if the device is not one of its hosts."""

    def set_rollout_state(
        self, rollout_id: int, state: RolloutState, reason: str, now: float
    ) -> RolloutRecord | None:
        """Moves the rollout to ``state``. A final state cancels its pending hosts and
        those of slices no controller claimed, marks the hosts of claimed slices
        interrupted (their claimers store what the playbook did: SliceStore), closes an
        unfinished wave and gives back every claim on a host. None if unknown."""

    def end_rollout(self, rollout_id: int, state: RolloutState, reason: str, now: float) -> bool:
        """Ends the rollout in ``state`` (a final one) as set_rollout_state does; True if
        this call ended it, False if it had ended already (another controller's end)
        or is unknown."""

    def unfinished_rollouts(self) -> dict[int, RolloutState]:
        """Every running or paused rollout's state by id: what the controller driving
        rollouts looks at every few seconds (no counts, no waves)."""

    def set_waiting(self, rollout_id: int, waiting: str, now: float) -> None:
        """Records why pending hosts wait (empty: they do not)."""

    def start_wave(
        self,
        rollout_id: int,
        wave: int,
        device_ids: Sequence[str],
        now: float,
        slice_hosts: int = SLICE_HOSTS,
    ) -> None:
        """The hosts are running in ``wave``, in slices of at most ``slice_hosts``
        (numbered from 1, cut by slices.cut), each stored for a controller to claim
        (controller/rollouts/slices.py); the wave's row is stored. StoreError if the
        wave was started already (by another controller)."""

    def finish_wave(
        self, rollout_id: int, wave: int, results: Sequence[HostResult], now: float
    ) -> None:
        """Stores each host's outcome given (with its task, message, return code, output
        ends and detail, bounded again) and closes the wave with its count of failed
        and unreachable hosts (all of the wave's, whichever controller stored them:
        the slices' results are stored as each slice finishes)."""

    def set_windows(self, school_id: str, windows: Sequence[str]) -> None:
        """Replaces the school's maintenance windows (none: any time free of lessons).
        Of two replacements at once, one is kept whole."""

    def windows(self, school_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Maintenance windows by school (of these schools), each school's in code point
        order; schools without are absent."""

    def busy_rooms(self, rooms: Iterable[Room], since: float, until: float) -> dict[Room, float]:
        """Rooms with a lesson overlapping [since, until), each with the end of its last
        such lesson (when it is free again)."""

    def lesson_rates(self, device_ids: Iterable[str], since: float, until: float) -> LessonRates:
        """Launches of lessons starting in [since, until) on these devices: each device
        of a dispatched lesson is one try, failed if it reported a failure or never
        launched."""
