"""What the device is and what it has: OS release, kernel, filesystems, sensors, the agent itself.

Everything absent on a device (no battery, no temperature sensor, no
/etc/os-release) is reported as absent (None or an empty list), never as zero.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path

import psutil

from inventory.model import OsInfo

log = logging.getLogger(__name__)

# Filesystems that are not storage a user or the OS can fill.
_PSEUDO_FS = {
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
}


@dataclass(frozen=True, slots=True)
class Filesystem:
    """Usage of one mounted, real filesystem."""

    mountpoint: str
    fstype: str
    total_bytes: int
    used_percent: float


@dataclass(frozen=True, slots=True)
class SystemFacts:
    """Slow-changing facts and the figures psutil gives beyond basic health."""

    os_name: str | None
    os_version: str | None
    kernel: str
    boot_time: float
    swap_percent: float | None
    filesystems: list[Filesystem]
    # Highest current reading per sensor chip, in °C; empty where there are none.
    temperatures_c: dict[str, float]
    battery_percent: float | None
    on_ac_power: bool | None
    agent_rss_bytes: int
    agent_cpu_percent: float
    kiosk_running: bool | None


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5), with shell quoting; other lines are ignored."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.strip().partition("=")
        if not sep or not key or key.startswith("#"):
            continue
        try:
            parts = shlex.split(raw)
        except ValueError:
            continue  # an unbalanced quote: skip the line, keep the rest
        values[key] = parts[0] if parts else ""
    return values


def read_os_release(root: Path = Path("/")) -> tuple[str | None, str | None]:
    """(NAME, VERSION_ID) from /etc/os-release or /usr/lib/os-release; (None, None) if absent."""
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        try:
            values = parse_os_release((root / candidate).read_text(errors="replace"))
        except OSError:
            continue
        return values.get("NAME"), values.get("VERSION_ID") or values.get("VERSION")
    log.warning("os-release not found under %s: OS name and version not reported", root)
    return None, None


def real_filesystems() -> list[Filesystem]:
    """Every mounted filesystem that holds data, once per device."""
    found: list[Filesystem] = []
    seen: set[str] = set()
    for part in psutil.disk_partitions(all=False):
        if part.fstype in _PSEUDO_FS or part.device in seen:
            continue
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue  # unmounted while being read, or not ours to see
        seen.add(part.device)
        found.append(Filesystem(part.mountpoint, part.fstype, usage.total, usage.percent))
    return found


def _temperatures() -> dict[str, float]:
    read = getattr(psutil, "sensors_temperatures", None)
    chips = read() if read else {}
    return {chip: max(s.current for s in sensors) for chip, sensors in chips.items() if sensors}


class KioskWatch:
    """Whether the kiosk program runs, without a walk of every process each heartbeat.

    The process found is remembered and checked by itself (psutil compares its start
    time, so a reused pid is not taken for it); the walk happens only while it is not
    running. A panel runs ~300 processes: the walk is ~20 ms of CPU, the check ~0.1.
    """

    def __init__(self, program: str) -> None:
        self._program = program
        self._name = Path(program).name
        self._found: psutil.Process | None = None

    def running(self) -> bool | None:
        """None when no kiosk program is configured."""
        if not self._program:
            return None
        if self._found is not None and _alive(self._found):
            return True
        self._found = None
        for proc in psutil.process_iter(["name", "exe"]):
            exe = proc.info.get("exe") or ""
            if (proc.info.get("name") == self._name or exe == self._program) and _alive(proc):
                self._found = proc
                return True
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class SystemCollector:
    """Collects SystemFacts; keeps the agent's own process handle for its CPU figure."""

    def __init__(self, kiosk_program: str = "", root: Path = Path("/")) -> None:
        self._kiosk = KioskWatch(kiosk_program)
        self._os = read_os_release(root)
        self._me = psutil.Process(os.getpid())
        self._me.cpu_percent(interval=None)  # primed: the next call measures since now

    def os_info(self) -> OsInfo:
        """What the device runs: it changes only with a restart."""
        return OsInfo(self._os[0], self._os[1], platform.release(), psutil.boot_time())

    def collect(self) -> SystemFacts:
        """One reading, without blocking."""
        swap = psutil.swap_memory()
        battery = getattr(psutil, "sensors_battery", lambda: None)()
        return SystemFacts(
            os_name=self._os[0],
            os_version=self._os[1],
            kernel=platform.release(),
            boot_time=psutil.boot_time(),
            swap_percent=swap.percent if swap.total else None,
            filesystems=real_filesystems(),
            temperatures_c=_temperatures(),
            battery_percent=battery.percent if battery else None,
            on_ac_power=battery.power_plugged if battery else None,
            agent_rss_bytes=self._me.memory_info().rss,
            agent_cpu_percent=self._me.cpu_percent(interval=None),
            kiosk_running=self._kiosk.running(),
        )
