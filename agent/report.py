"""One heartbeat's worth of facts: collected together and judged.

The daemon sends these as Heartbeats (agent/link_messages.py puts them in wire form);
``--once`` prints the same collection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.errors import CollectError
from agent.health import HealthCollector
from agent.network import NetworkReader, NetworkReport
from agent.report_limits import reported_filesystems, reported_interfaces
from agent.settings import AgentSettings
from agent.status import Thresholds, assess
from agent.system import SystemCollector, SystemFacts
from inventory.model import Condition, Health, OsInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Report:
    """Everything collected at one moment, and the device's verdict on it."""

    health: Health
    facts: SystemFacts
    # None when the network could not be read this time; ``network_error`` says why.
    network: NetworkReport | None
    network_error: str | None
    condition: Condition
    reasons: list[str]


class Reporter:
    """Collects reports; its thresholds are replaced by the controller's in Welcome."""

    def __init__(self, settings: AgentSettings) -> None:
        self._health = HealthCollector(settings.disk_path)
        self._system = SystemCollector(settings.kiosk_program)
        self._network = NetworkReader()
        self.limits = Thresholds()

    def collect(self) -> Report:
        """One report; raises OSError if basic health cannot be read."""
        health = self._health.collect()
        facts = self._system.collect()
        network: NetworkReport | None = None
        network_error: str | None = None
        try:
            network = self._network.read()
        except CollectError as exc:
            network_error = str(exc)
            log.warning("network not reported this time: %s", exc)
        condition, reasons = assess(health, facts, network, self.limits)
        if network_error is not None:
            reasons.append("network not readable")
        return Report(health, facts, network, network_error, condition, reasons)

    def os_info(self) -> OsInfo:
        """What the device runs, for Hello."""
        return self._system.os_info()


def report_shape(report: Report) -> tuple[object, ...]:
    """What makes a full report worth sending at once: everything but running figures
    (usage, counters, signal, temperatures), of what the report carries (a container's
    link coming and going is not reported, so it sends nothing)."""
    f, n = report.facts, report.network
    return (
        report.condition,
        tuple(report.reasons),
        tuple(
            (fs.mountpoint, fs.fstype, fs.total_bytes) for fs in reported_filesystems(f.filesystems)
        ),
        f.swap_percent is None,
        f.battery_percent is None,
        f.on_ac_power,
        f.kiosk_running,
        None
        if n is None
        else (
            tuple(
                (i.name, i.state, i.mac, i.mtu, tuple(i.addresses), i.speed_mbit)
                for i in reported_interfaces(n)
            ),
            n.default_gateway,
            n.default_interface,
            tuple((w.interface, w.bssid, w.ssid, w.frequency_mhz) for w in n.wifi),
            n.wifi_status,
        ),
    )


class FullReports:
    """Which heartbeats carry the full reports: the first on a stream, one whose shape
    changed, and otherwise one every ``interval`` seconds (0: all of them)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._sent_at: float | None = None
        self._shape: tuple[object, ...] | None = None

    def reset(self) -> None:
        """The next heartbeat is full (a new stream)."""
        self._sent_at = None

    def due(self, report: Report, now: float) -> bool:
        """Whether this report goes out full; if so, counts it as sent."""
        shape = report_shape(report)
        if (
            self._sent_at is not None
            and shape == self._shape
            and now - self._sent_at < self.interval
        ):
            return False
        self._sent_at, self._shape = now, shape
        return True
