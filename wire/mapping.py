"""Mappings between schoolfleet.v1 wire values and our own, used on both ends.

Only translation lives here; checking what a device sends is the controller's job
(controller/api/convert.py).
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from inventory.model import Condition, DeviceKind, DeviceStatus, Health, OsInfo
from protos.schoolfleet.v1 import admin_pb2, fleet_pb2

KIND_TO_PB = {
    DeviceKind.PANEL: fleet_pb2.DEVICE_KIND_PANEL,
    DeviceKind.MONOBLOCK: fleet_pb2.DEVICE_KIND_MONOBLOCK,
    DeviceKind.LAPTOP: fleet_pb2.DEVICE_KIND_LAPTOP,
    DeviceKind.SERVER: fleet_pb2.DEVICE_KIND_SERVER,
}
KIND_FROM_PB = {v: k for k, v in KIND_TO_PB.items()}
STATUS_TO_PB = {
    DeviceStatus.ONLINE: admin_pb2.DEVICE_STATUS_ONLINE,
    DeviceStatus.OFFLINE: admin_pb2.DEVICE_STATUS_OFFLINE,
}
STATUS_FROM_PB = {v: k for k, v in STATUS_TO_PB.items()}
CONDITION_TO_PB = {
    Condition.OK: fleet_pb2.CONDITION_OK,
    Condition.DEGRADED: fleet_pb2.CONDITION_DEGRADED,
    Condition.CRITICAL: fleet_pb2.CONDITION_CRITICAL,
}
CONDITION_FROM_PB = {v: k for k, v in CONDITION_TO_PB.items()}


def timestamp(seconds: float) -> Timestamp:
    """A Timestamp for Unix seconds."""
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def seconds(ts: Timestamp) -> float:
    """Unix seconds of a Timestamp."""
    return ts.seconds + ts.nanos / 1e9


def health_to_pb(h: Health) -> fleet_pb2.Health:
    """The wire form of a health sample."""
    return fleet_pb2.Health(
        collected_at=timestamp(h.collected_at),
        cpu_percent=h.cpu_percent,
        memory_percent=h.memory_percent,
        disk_percent=h.disk_percent,
        uptime_seconds=h.uptime_seconds,
        load1=h.load1,
        load5=h.load5,
        load15=h.load15,
    )


def health_from_pb(h: fleet_pb2.Health) -> Health:
    """A health sample from the wire, unchecked."""
    return Health(
        collected_at=seconds(h.collected_at),
        cpu_percent=h.cpu_percent,
        memory_percent=h.memory_percent,
        disk_percent=h.disk_percent,
        uptime_seconds=h.uptime_seconds,
        load1=h.load1,
        load5=h.load5,
        load15=h.load15,
    )


def os_to_pb(o: OsInfo) -> fleet_pb2.OsInfo:
    """The wire form of what a device runs."""
    return fleet_pb2.OsInfo(
        name=o.name or "",
        version=o.version or "",
        kernel=o.kernel,
        boot_time=timestamp(o.boot_time),
    )


def os_from_pb(o: fleet_pb2.OsInfo) -> OsInfo:
    """What a device runs, from the wire; empty name and version mean absent."""
    return OsInfo(o.name or None, o.version or None, o.kernel, seconds(o.boot_time))
