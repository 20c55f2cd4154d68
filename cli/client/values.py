"""Values schoolctl's client answers with where inventory/ has none that fits: plain
frozen dataclasses, so that commands and renderers import them without gRPC."""

from __future__ import annotations

from dataclasses import dataclass

from inventory.infra import AccessPoint, UnknownBssid
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


@dataclass(frozen=True, slots=True)
class Filesystem:
    """A mounted filesystem's size and use."""

    mountpoint: str
    fstype: str
    total_bytes: int
    used_percent: float


@dataclass(frozen=True, slots=True)
class SystemReport:
    """A device's figures beyond basic health; absent hardware is None, never zero."""

    swap_percent: float | None
    filesystems: tuple[Filesystem, ...]
    # (chip, its hottest current reading in °C), as the device listed them.
    temperatures: tuple[tuple[str, float], ...]
    battery_percent: float | None
    on_ac_power: bool | None
    agent_rss_bytes: int
    agent_cpu_percent: float
    # None when no kiosk program is configured.
    kiosk_running: bool | None


@dataclass(frozen=True, slots=True)
class Interface:
    """A network interface as the kernel says, with its counters."""

    name: str
    state: str
    mac: str
    mtu: int
    addresses: tuple[str, ...]
    speed_mbit: int | None
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    wireless: bool


@dataclass(frozen=True, slots=True)
class WifiLink:
    """A Wi-Fi association."""

    interface: str
    bssid: str
    ssid: str
    frequency_mhz: int
    signal_dbm: float


@dataclass(frozen=True, slots=True)
class NetworkReport:
    """A device's interfaces, default route and Wi-Fi ("" where it has none)."""

    interfaces: tuple[Interface, ...]
    default_gateway: str
    default_interface: str
    wifi: tuple[WifiLink, ...]
    wifi_status: str


@dataclass(frozen=True, slots=True)
class KeyFingerprint:
    """An SSH host key as the controller shows it: its type and SHA256 fingerprint."""

    key_type: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Probe:
    """An access point's or server's latest probe."""

    up: bool
    # Why it is down, or why facts are missing, in words.
    reason: str
    duration_seconds: float
    probed_at: float
    # uptime_seconds, load1, load5, load15, memory_percent, disk_percent, clients.
    facts: dict[str, float]


@dataclass(frozen=True, slots=True)
class InfraTarget:
    """An access point or server from the inventory, with its latest probe (None: never
    probed) and host keys (pinned: None if none is; seen: the one trust would pin)."""

    target_id: str
    school_id: str
    address: str
    ssh_user: str
    ssh_port: int
    latest: Probe | None
    pinned_key: KeyFingerprint | None
    seen_key: KeyFingerprint | None
    # Access points: the inventory's row, the devices whose latest report names one of
    # its BSSIDs, their median signal, and when a device last reported one of them.
    access_point: AccessPoint
    devices: int
    median_signal_dbm: float | None
    last_seen_by_device: float | None


@dataclass(frozen=True, slots=True)
class UnknownBssids:
    """BSSIDs devices name that no access point has, and how many were left out of a
    long answer (``more``)."""

    bssids: list[UnknownBssid]
    more: int


@dataclass(frozen=True, slots=True)
class DeviceMove:
    """A device moved to another school (`schoolctl devices move`)."""

    device_id: str
    from_school_id: str
    to_school_id: str
