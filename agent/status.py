"""The device's own verdict: ok, degraded or critical, with the reasons.

A pure function of what was collected and the thresholds (defaults here; the
controller sends its own in Welcome), so it is tested without a device.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.network import NetworkReport
from agent.system import SystemFacts
from inventory.model import Condition, Health

OK, DEGRADED, CRITICAL = Condition.OK, Condition.DEGRADED, Condition.CRITICAL


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits above which a figure makes the device degraded or critical."""

    disk_degraded: float = 90.0
    disk_critical: float = 98.0
    memory_degraded: float = 95.0
    temperature_degraded: float = 85.0
    temperature_critical: float = 95.0
    battery_degraded: float = 10.0


def assess(
    health: Health, facts: SystemFacts, network: NetworkReport | None, limits: Thresholds
) -> tuple[Condition, list[str]]:
    """(condition, reasons): the worst level any reason reaches, and every reason.

    ``network`` is None when it could not be read; that alone makes no verdict.
    """
    found: list[tuple[Condition, str]] = []
    for fs in facts.filesystems:
        if fs.used_percent >= limits.disk_critical:
            found.append((CRITICAL, f"disk {fs.mountpoint} at {fs.used_percent:.0f}%"))
        elif fs.used_percent >= limits.disk_degraded:
            found.append((DEGRADED, f"disk {fs.mountpoint} at {fs.used_percent:.0f}%"))
    if health.memory_percent >= limits.memory_degraded:
        found.append((DEGRADED, f"memory at {health.memory_percent:.0f}%"))
    for chip, celsius in sorted(facts.temperatures_c.items()):
        if celsius >= limits.temperature_critical:
            found.append((CRITICAL, f"temperature {chip} at {celsius:.0f}°C"))
        elif celsius >= limits.temperature_degraded:
            found.append((DEGRADED, f"temperature {chip} at {celsius:.0f}°C"))
    if (
        facts.battery_percent is not None
        and not facts.on_ac_power
        and facts.battery_percent <= limits.battery_degraded
    ):
        found.append((DEGRADED, f"battery at {facts.battery_percent:.0f}% and not charging"))
    if network is not None and network.default_gateway is None:
        found.append((CRITICAL, "no default route"))
    if facts.kiosk_running is False:
        found.append((DEGRADED, "kiosk program not running"))
    levels = {level for level, _ in found}
    status = CRITICAL if CRITICAL in levels else DEGRADED if DEGRADED in levels else OK
    return status, [reason for _, reason in found]
