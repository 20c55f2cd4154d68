"""One heartbeat's worth of facts: collected together, judged, put in wire form.

The daemon sends these as Heartbeats; ``--once`` prints the same collection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.errors import CollectError
from agent.health import HealthCollector
from agent.network import NetworkReader, NetworkReport
from agent.report_limits import (
    MAX_REASONS,
    cut,
    reported_filesystems,
    reported_interfaces,
    reported_temperatures,
    reported_wifi,
)
from agent.settings import AgentSettings
from agent.status import Thresholds, assess
from agent.system import SystemCollector, SystemFacts
from inventory.model import Condition, Health, OsInfo
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from wire.mapping import CONDITION_TO_PB, health_to_pb

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


def thresholds_from_pb(t: fleet_pb2.Thresholds) -> Thresholds:
    """The controller's limits; a limit it left at 0 keeps the agent's default."""
    default = Thresholds()
    return Thresholds(
        disk_degraded=t.disk_degraded_percent or default.disk_degraded,
        disk_critical=t.disk_critical_percent or default.disk_critical,
        memory_degraded=t.memory_degraded_percent or default.memory_degraded,
        temperature_degraded=t.temperature_degraded_celsius or default.temperature_degraded,
        temperature_critical=t.temperature_critical_celsius or default.temperature_critical,
        battery_degraded=t.battery_degraded_percent or default.battery_degraded,
    )


def system_to_pb(f: SystemFacts) -> fleet_pb2.SystemReport:
    """The wire form of the figures beyond basic health; absent stays unset."""
    out = fleet_pb2.SystemReport(
        filesystems=[
            fleet_pb2.Filesystem(
                mountpoint=cut(fs.mountpoint),
                fstype=cut(fs.fstype),
                total_bytes=fs.total_bytes,
                used_percent=fs.used_percent,
            )
            for fs in reported_filesystems(f.filesystems)
        ],
        temperatures=[
            fleet_pb2.Temperature(chip=cut(chip), celsius=c)
            for chip, c in reported_temperatures(f.temperatures_c)
        ],
        agent_rss_bytes=f.agent_rss_bytes,
        agent_cpu_percent=f.agent_cpu_percent,
    )
    if f.swap_percent is not None:
        out.swap_percent = f.swap_percent
    if f.battery_percent is not None:
        out.battery_percent = f.battery_percent
    if f.on_ac_power is not None:
        out.on_ac_power = f.on_ac_power
    if f.kiosk_running is not None:
        out.kiosk_running = f.kiosk_running
    return out


def network_to_pb(n: NetworkReport) -> fleet_pb2.NetworkReport:
    """The wire form of the network as the kernel sees it: the interfaces that matter
    (agent/report_limits.py says which)."""
    reported = reported_interfaces(n)
    interfaces = []
    for i in reported:
        pb = fleet_pb2.Interface(
            name=i.name,
            state=i.state,
            mac=i.mac,
            mtu=i.mtu,
            addresses=i.addresses,
            rx_bytes=i.rx_bytes,
            tx_bytes=i.tx_bytes,
            rx_errors=i.rx_errors,
            tx_errors=i.tx_errors,
            wireless=i.wireless,
        )
        if i.speed_mbit is not None:
            pb.speed_mbit = i.speed_mbit
        interfaces.append(pb)
    return fleet_pb2.NetworkReport(
        interfaces=interfaces,
        default_gateway=n.default_gateway or "",
        default_interface=n.default_interface or "",
        wifi=[
            fleet_pb2.Wifi(
                interface=w.interface,
                bssid=w.bssid,
                ssid=w.ssid,
                frequency_mhz=w.frequency_mhz,
                signal_dbm=w.signal_dbm,
            )
            for w in reported_wifi(n, reported)
        ],
        wifi_status=n.wifi_status,
    )


def heartbeat(
    report: Report, pending: int, dropped: int, *, full: bool = True
) -> agent_pb2.Heartbeat:
    """The Heartbeat message for a report and the spool's counts; ``full`` adds the
    system and network reports."""
    out = agent_pb2.Heartbeat(
        health=health_to_pb(report.health),
        condition=CONDITION_TO_PB[report.condition],
        reasons=[cut(r) for r in report.reasons[:MAX_REASONS]],
        spool=fleet_pb2.SpoolStats(pending=pending, dropped=dropped),
    )
    if full:
        out.system.CopyFrom(system_to_pb(report.facts))
        if report.network is not None:
            out.network.CopyFrom(network_to_pb(report.network))
    return out


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


def heartbeat_size(report: Report, *, full: bool = True) -> int:
    """Bytes of the AgentMessage carrying ``report``, with a seq as large as a year of
    heartbeats every second would make it."""
    message = agent_pb2.AgentMessage(seq=2**25, heartbeat=heartbeat(report, 0, 0, full=full))
    return message.ByteSize()
