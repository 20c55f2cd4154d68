"""The schools' infrastructure beside the managed devices: schools, access points,
school servers, and what probing them finds. Plain values; no I/O."""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field


class TargetKind(enum.StrEnum):
    """What a probe target is."""

    AP = "ap"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class School:
    school_id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Room:
    """A room of a school, as an inventory import names it (kept in the rooms table,
    where lessons are scheduled)."""

    school_id: str
    room_id: str


@dataclass(frozen=True, slots=True)
class AccessPoint:
    """A Wi-Fi access point from the inventory."""

    ap_id: str
    school_id: str
    # Management address: an IP address or a host name.
    address: str
    room_id: str = ""
    location: str = ""
    model: str = ""
    mac: str = ""
    # Lower case, colon separated.
    bssids: tuple[str, ...] = ()
    # Empty: probed by TCP only; otherwise also over SSH (OpenWrt-style access points).
    ssh_user: str = ""
    ssh_port: int = 22


@dataclass(frozen=True, slots=True)
class Server:
    """A school's server from the inventory."""

    server_id: str
    school_id: str
    address: str
    ssh_user: str = "root"
    ssh_port: int = 22


@dataclass(frozen=True, slots=True)
class HostKey:
    """An SSH host key as known_hosts writes it: ``ssh-ed25519`` and base64 data."""

    key_type: str
    key_data: str

    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` and ssh's prompts show it."""
        try:
            blob = base64.b64decode(self.key_data, validate=True)
        except (binascii.Error, ValueError):
            return "SHA256:(not base64)"
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Something the controller probes: its management address, and over SSH how."""

    kind: TargetKind
    target_id: str
    school_id: str
    address: str
    # Empty: TCP reachability only.
    ssh_user: str = ""
    ssh_port: int = 22
    # The key `schoolctl servers trust` pinned; None: SSH facts are not collected
    # (the probe records the key it saw, for trust to pin).
    pinned_key: HostKey | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of one target."""

    kind: TargetKind
    target_id: str
    up: bool
    # Why it is down, or why facts are missing (host key not trusted), in words.
    reason: str
    duration: float
    probed_at: float
    # uptime_seconds, load1/5/15, memory_percent, disk_percent, clients (what SSH read).
    facts: Mapping[str, float] = field(default_factory=dict)
    # The host key the target presented, when it is not the pinned one.
    seen_key: HostKey | None = None


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """A target with its latest probe, as `schoolctl aps list` / `servers show` show it."""

    target: ProbeTarget
    latest: ProbeResult | None
    # Access points: devices whose latest report says they are associated with one of
    # its BSSIDs, their median signal, and when any device last saw one of its BSSIDs.
    devices: int = 0
    median_signal_dbm: float | None = None
    last_seen_by_device: float | None = None
    # Access points: the inventory's row (room, location, model, MAC, BSSIDs).
    access_point: AccessPoint | None = None


@dataclass(frozen=True, slots=True)
class UnknownBssid:
    """A BSSID a school's devices are associated with that no access point in the
    inventory has: a missing inventory row, or an access point that is not ours."""

    school_id: str
    bssid: str
    # The school's devices whose latest report names it, and their median signal.
    devices: int
    median_signal_dbm: float | None
    # The latest of those reports.
    last_seen: float
