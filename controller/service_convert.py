"""Translation between the wire (schoolfleet.v1) and our own values, with checks.

Everything a device sends is checked here before it goes further: ids, the kind,
and health figures (finite, in range). A failed check is a ProtocolError that
names the field.
"""

from __future__ import annotations

import math

from controller.errors import ProtocolError
from inventory.model import DeviceIdentity, DeviceRecord, Health, KindCount, valid_id
from protos import mapping
from protos.mapping import KIND_FROM_PB, KIND_TO_PB, STATUS_TO_PB, health_to_pb, timestamp
from protos.schoolfleet.v1 import admin_pb2, agent_pb2, fleet_pb2

_TEXT_MAX = 255


def _check_id(value: str, field: str, *, optional: bool = False) -> str:
    if optional and not value:
        return value
    if not valid_id(value):
        raise ProtocolError(
            f"{field} {value[:80]!r} is not a valid id (1-64 of A-Z a-z 0-9 . _ : -)"
        )
    return value


def _check_text(value: str, field: str) -> str:
    if len(value) > _TEXT_MAX:
        raise ProtocolError(f"{field} is longer than {_TEXT_MAX} characters")
    return value


def identity_from_hello(hello: agent_pb2.Hello) -> DeviceIdentity:
    """The identity a Hello claims, checked."""
    kind = KIND_FROM_PB.get(hello.kind)
    if kind is None:
        raise ProtocolError(f"Hello.kind {hello.kind} is not a known device kind")
    return DeviceIdentity(
        device_id=_check_id(hello.device_id, "Hello.device_id"),
        kind=kind,
        school_id=_check_id(hello.school_id, "Hello.school_id"),
        room_id=_check_id(hello.room_id, "Hello.room_id", optional=True),
        hostname=_check_text(hello.hostname, "Hello.hostname"),
        agent_version=_check_text(hello.agent_version, "Hello.agent_version"),
    )


def _check_number(value: float, field: str, high: float = math.inf) -> None:
    if not math.isfinite(value) or not 0 <= value <= high:
        raise ProtocolError(f"Health.{field} {value!r} is out of range")


def health_from_pb(h: fleet_pb2.Health) -> Health:
    """A heartbeat's health figures, checked."""
    health = mapping.health_from_pb(h)
    for field in ("cpu_percent", "memory_percent", "disk_percent"):
        _check_number(getattr(health, field), field, 100.0)
    for field in ("uptime_seconds", "load1", "load5", "load15"):
        _check_number(getattr(health, field), field)
    return health


def device_to_pb(d: DeviceRecord) -> admin_pb2.Device:
    """The wire form of a stored device."""
    out = admin_pb2.Device(
        device_id=d.identity.device_id,
        kind=KIND_TO_PB[d.identity.kind],
        school_id=d.identity.school_id,
        room_id=d.identity.room_id,
        hostname=d.identity.hostname,
        agent_version=d.identity.agent_version,
        status=STATUS_TO_PB[d.status],
        stream_up=d.stream_up,
        first_seen=timestamp(d.first_seen),
        offline_after_seconds=int(d.offline_after),
        last_seq=d.last_seq,
    )
    if d.last_heartbeat is not None:
        out.last_heartbeat.CopyFrom(timestamp(d.last_heartbeat))
    if d.health is not None:
        out.health.CopyFrom(health_to_pb(d.health))
    return out


def count_to_pb(c: KindCount) -> admin_pb2.KindCount:
    """The wire form of one school-and-kind count."""
    return admin_pb2.KindCount(
        school_id=c.school_id, kind=KIND_TO_PB[c.kind], online=c.online, offline=c.offline
    )
