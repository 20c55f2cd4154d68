"""The agent's values in wire form and back: heartbeats, the controller's thresholds,
lesson orders and events, and the spool's bodies.

The link's side of the contract: the reporter, the launcher and the spool work on our
own values and bytes, and only this module (with the link's others) builds or reads
schoolfleet.v1 messages.
"""

from __future__ import annotations

from agent.lessons import LessonEvent, LessonLaunch
from agent.network import NetworkReport
from agent.report import Report
from agent.report_limits import (
    MAX_REASONS,
    cut,
    reported_filesystems,
    reported_interfaces,
    reported_temperatures,
    reported_wifi,
)
from agent.spool import Spooled
from agent.status import Thresholds
from agent.system import SystemFacts
from inventory.lessons import EventKind, FailReason
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from wire.mapping import CONDITION_TO_PB, health_to_pb, seconds, timestamp

_Event = agent_pb2.LessonEvent
EVENT_KIND_TO_PB = {
    EventKind.LAUNCHED: _Event.KIND_LAUNCHED,
    EventKind.FAILED: _Event.KIND_FAILED,
    EventKind.ENDED: _Event.KIND_ENDED,
    EventKind.RELAUNCHED: _Event.KIND_RELAUNCHED,
}
# FailReason.NOT_REACHED is the controller's own: no device says it.
REASON_TO_PB = {
    FailReason.NO_PROGRAM: _Event.REASON_NO_PROGRAM,
    FailReason.URL_REFUSED: _Event.REASON_URL_REFUSED,
    FailReason.CRASHED: _Event.REASON_CRASHED,
    FailReason.NO_NETWORK: _Event.REASON_NO_NETWORK,
}


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


def heartbeat_size(report: Report, *, full: bool = True) -> int:
    """Bytes of the AgentMessage carrying ``report``, with a seq as large as a year of
    heartbeats every second would make it."""
    message = agent_pb2.AgentMessage(seq=2**25, heartbeat=heartbeat(report, 0, 0, full=full))
    return message.ByteSize()


def launch_from_pb(cmd: agent_pb2.LaunchLesson) -> LessonLaunch:
    """The lesson a LaunchLesson command asks to show."""
    return LessonLaunch(
        lesson_id=cmd.lesson_id,
        url=cmd.url,
        starts_at=seconds(cmd.starts_at),
        ends_at=seconds(cmd.ends_at),
    )


def lesson_event_to_pb(e: LessonEvent) -> agent_pb2.LessonEvent:
    """The wire form of the launcher's event; no reason stays REASON_UNSPECIFIED."""
    return agent_pb2.LessonEvent(
        lesson_id=e.lesson_id,
        command_id=e.command_id,
        kind=EVENT_KIND_TO_PB[e.kind],
        reason=_Event.REASON_UNSPECIFIED if e.reason is None else REASON_TO_PB[e.reason],
        message=e.message,
        at=timestamp(e.at),
    )


def spool_body(message: agent_pb2.AgentMessage) -> bytes:
    """What the spool keeps of a message: its bytes with seq 0, for the spool's row
    numbers it (the same bytes every earlier agent stored)."""
    message.seq = 0
    return message.SerializeToString()


def from_spool(spooled: Spooled) -> agent_pb2.AgentMessage:
    """A spooled message as it goes on the stream, with its seq."""
    message = agent_pb2.AgentMessage.FromString(spooled.body)
    message.seq = spooled.seq
    return message
