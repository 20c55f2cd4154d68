"""Plain values that describe the fleet, shared by agent, controller and CLI.

Nothing here does I/O or knows about protobuf; the service modules translate.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# The same names a rollout selector's label.NAME takes (inventory/rollouts.py).
_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABELS_MAX = 32
LABEL_VALUE_MAX = 128


class DeviceKind(enum.StrEnum):
    """What a managed device is."""

    PANEL = "panel"
    MONOBLOCK = "monoblock"
    LAPTOP = "laptop"
    SERVER = "server"


class DeviceStatus(enum.StrEnum):
    """Whether the controller hears from a device now."""

    ONLINE = "online"
    OFFLINE = "offline"


class Condition(enum.StrEnum):
    """A device's own verdict on its health, from the controller's thresholds."""

    OK = "ok"
    DEGRADED = "degraded"
    CRITICAL = "critical"


def valid_id(value: str) -> bool:
    """Device, school and room ids: 1-64 of letters, digits and ``._:-``."""
    return _ID.fullmatch(value) is not None


def ip_address(text: str) -> str:
    """``text`` as a canonical IP address (``::ffff:a.b.c.d`` as ``a.b.c.d``); raises
    ValueError naming it if it is none, or not one a device can be reached at."""
    try:
        # The longest IPv6 text is 45 characters; a scope (fe80::1%eth0) adds a name.
        if len(text) > 64:
            raise ValueError
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text[:80]!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{text[:80]!r} is not an address a device can be reached at")
    return str(address)


def check_labels(labels: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Labels sorted by name, as a device's identity keeps them; raises ValueError
    naming the first that breaks a rule (count, name, value length, control
    characters, a name twice)."""
    pairs = sorted(labels)
    if len(pairs) > LABELS_MAX:
        raise ValueError(f"{len(pairs)} labels, at most {LABELS_MAX} are allowed")
    seen: set[str] = set()
    for name, value in pairs:
        if _LABEL_NAME.fullmatch(name) is None:
            raise ValueError(
                f"label name {name[:80]!r} is not 1-64 of letters, digits and . _ - "
                "(starting with a letter or digit)"
            )
        if name in seen:
            raise ValueError(f"label {name} is given twice")
        seen.add(name)
        if len(value) > LABEL_VALUE_MAX:
            raise ValueError(f"label {name} is longer than {LABEL_VALUE_MAX} characters")
        # Shown in terminals and logs as they are.
        if not value.isprintable():
            raise ValueError(f"label {name} has a control character")
    return tuple(pairs)


def parse_label(entry: str) -> tuple[str, str]:
    """``grade=5`` -> ("grade", "5"), as the agent's config writes a label; the name
    is checked by :func:`check_labels`."""
    name, sep, value = entry.partition("=")
    if not sep:
        raise ValueError(f"label {entry[:80]!r} must be written NAME=VALUE")
    return name, value


@dataclass(frozen=True, slots=True)
class Health:
    """Basic health the agent collects each interval; times are Unix seconds."""

    collected_at: float
    cpu_percent: float
    memory_percent: float
    disk_percent: float
    uptime_seconds: float
    load1: float
    load5: float
    load15: float


@dataclass(frozen=True, slots=True)
class OsInfo:
    """What a device runs; None where /etc/os-release is absent."""

    name: str | None
    version: str | None
    kernel: str
    boot_time: float


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who a device says it is when its stream opens."""

    device_id: str
    kind: DeviceKind
    school_id: str
    room_id: str
    hostname: str = ""
    agent_version: str = ""
    os: OsInfo | None = None
    # Where Ansible reaches the device (an IP address), "" if unknown.
    address: str = ""
    # Sorted by name (see check_labels), so identities compare and hash as values.
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """What a device's latest heartbeat said beyond basic health.

    ``system`` and ``network`` are kept in their wire form (schoolfleet.v1
    SystemReport and NetworkReport): the controller stores and serves them whole
    and never looks inside.
    """

    condition: Condition
    reasons: tuple[str, ...]
    # Empty in a heartbeat that carries no full report (the stored ones stay).
    system: bytes = b""
    network: bytes = b""
    spool_pending: int = 0
    spool_dropped: int = 0
    # When the stored system and network reports were received.
    report_at: float | None = None
    # From a full network report: the device's Wi-Fi associations, (BSSID in lower-case
    # colon form, signal in dBm or None); empty in heartbeats between full reports.
    wifi: tuple[tuple[str, float | None], ...] = ()


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a device answered to one command."""

    command_id: str
    # ok, failed or unsupported
    status: str
    message: str
    finished_at: float
    received_at: float
    seq: int


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as the controller's store knows it, with its status at read time."""

    identity: DeviceIdentity
    status: DeviceStatus
    stream_up: bool
    first_seen: float
    last_heartbeat: float | None
    offline_after: float
    last_seq: int
    health: Health | None
    report: DeviceReport | None = None
    heartbeats_stored: int = 0
    seq_gaps: int = 0
    # Newest first; filled where a single device is read.
    recent_commands: tuple[CommandOutcome, ...] = ()
    # Filled where a single device is read; None if it never enrolled.
    enrollment: Enrollment | None = None


@dataclass(frozen=True, slots=True)
class KindCount:
    """How many devices of one kind in one school are online and offline."""

    school_id: str
    kind: DeviceKind
    online: int
    offline: int


@dataclass(frozen=True, slots=True)
class SchoolReports:
    """What one school's devices say about themselves, summed for dashboards."""

    school_id: str
    # Online devices by their latest verdict; a condition with none is absent.
    conditions: dict[Condition, int]
    # Messages the controller never got from this school's devices (sequence gaps).
    messages_missing: int
    # Heartbeats the school's devices dropped from full spools, as they report it.
    spool_dropped: int


@dataclass(frozen=True, slots=True)
class EnrollToken:
    """A secret that lets devices of one school enroll, a number of times, until it expires.

    Only a hash of the secret is kept; ``token_id`` (the secret's first characters)
    names it in lists and revocations.
    """

    token_id: str
    school_id: str
    uses_left: int
    uses: int
    expires_at: float
    created_at: float
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        """Whether a device may enroll with it at ``now``."""
        return self.revoked_at is None and self.uses_left > 0 and now < self.expires_at


@dataclass(frozen=True, slots=True)
class Enrollment:
    """The certificate a device was issued when it enrolled."""

    device_id: str
    school_id: str
    # Hex, as certificates show it.
    serial: str
    not_after: float
    enrolled_at: float
    token_id: str
    # Whether the next enrollment of this device id may replace this one.
    reenroll: bool = False
    # Set when the device was decommissioned: it may not connect until it enrolls again.
    revoked_at: float | None = None
