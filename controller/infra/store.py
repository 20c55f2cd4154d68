"""What the controller needs from a store for the schools' infrastructure: the
inventory of schools, rooms, access points and servers, the latest probe of each
target, SSH host keys, and what devices see of the Wi-Fi."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from inventory.infra import (
    AccessPoint,
    HostKey,
    ProbeResult,
    ProbeTarget,
    Room,
    School,
    Server,
    TargetKind,
    TargetStatus,
    UnknownBssid,
)


@dataclass(frozen=True, slots=True)
class InventoryCounts:
    """What an inventory import changed, over every kind of row."""

    added: int
    updated: int
    unchanged: int


@dataclass(frozen=True, slots=True)
class InfraCensus:
    """One school's access points or servers by their latest probe, for /metrics."""

    school_id: str
    kind: TargetKind
    up: int
    down: int
    # Never probed.
    unknown: int
    # Access points no device reported seeing since the census's ``seen_since``
    # (one without BSSIDs in the inventory is never seen); 0 for servers.
    unseen: int


class InfraStore(Protocol):
    """The infrastructure inventory and its probes, in the store."""

    def known_schools(self, school_ids: Iterable[str]) -> set[str]:
        """Those of ``school_ids`` an inventory import stored."""

    def school_ids(self) -> list[str]:
        """Every school the controller knows, sorted: imported with the inventory, or
        named by a device or a lesson. /metrics gives each of them every series, at 0
        where nothing is counted."""

    def target_schools(self, kind: TargetKind, target_ids: Iterable[str]) -> dict[str, str]:
        """The school each of these access points or servers is stored in, if any."""

    def bssid_owners(self, bssids: Iterable[str]) -> dict[str, str]:
        """The access point each of these BSSIDs is stored with, if any."""

    def save_inventory(
        self,
        schools: Sequence[School],
        rooms: Sequence[Room],
        aps: Sequence[AccessPoint],
        servers: Sequence[Server],
        now: float,
    ) -> InventoryCounts:
        """Adds and updates, in one transaction; nothing not given is removed. An access
        point's BSSIDs become the ones given. Raises StoreError (and stores nothing) if
        a BSSID is stored with another access point: callers check first."""

    def list_access_points(
        self,
        school_id: str | None,
        schools: frozenset[str] | None,
        *,
        down_only: bool = False,
        after_id: str = "",
        limit: int = 10_000,
    ) -> list[TargetStatus]:
        """Access points by id, after ``after_id``, of one school or all (within
        ``schools``, a caller's scope), with their latest probe, inventory row and the
        devices' view (``TargetStatus``); ``down_only``: those whose probe says down."""

    def list_servers(
        self, school_id: str | None, schools: frozenset[str] | None, *, down_only: bool = False
    ) -> list[TargetStatus]:
        """Servers by id, as ``list_access_points``; host keys in ``target.pinned_key``
        and ``latest.seen_key`` (the key seen that is not the pinned one)."""

    def get_server(self, server_id: str) -> TargetStatus | None:
        """One server, as ``list_servers`` gives it, or None."""

    def probe_targets(self) -> list[ProbeTarget]:
        """Every access point and server, with the host key pinned for it."""

    def record_probes(self, results: Sequence[ProbeResult]) -> None:
        """Keeps each target's latest result (an older one changes nothing); a result's
        ``seen_key`` becomes the target's seen key unless it is the pinned one."""

    def trust_host_key(
        self, kind: TargetKind, target_id: str, now: float, expected: HostKey | None = None
    ) -> HostKey | None:
        """Pins the key last seen (replacing a pinned one) and returns it; None if no
        key is seen but not pinned, or (with ``expected``) the one seen is another."""

    def infra_counts(self) -> list[tuple[str, TargetKind, int, int]]:
        """(school, kind, up, down) by the latest probes; targets never probed are in
        neither count (``infra_census`` has them)."""

    def infra_census(self, seen_since: float) -> list[InfraCensus]:
        """Per school and kind: up, down, never probed, and access points unseen."""

    def unknown_bssids(self, schools: frozenset[str] | None) -> list[UnknownBssid]:
        """BSSIDs that devices' latest reports name and no access point has, per
        school of the devices naming them (within ``schools``, a caller's scope), by
        school and BSSID."""
