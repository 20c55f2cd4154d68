"""Translation between the wire (schoolfleet.v1) and our own values, with checks.

Everything a device sends is checked here before it goes further: ids, the kind,
and health figures (finite, in range). A failed check is a ProtocolError that
names the field.
"""

from __future__ import annotations

import math
import re
from urllib.parse import unquote

from controller.errors import ProtocolError
from inventory.model import (
    DeviceIdentity,
    DeviceRecord,
    DeviceReport,
    Enrollment,
    EnrollToken,
    Health,
    KindCount,
    OsInfo,
    check_labels,
    ip_address,
    valid_id,
)
from protos.schoolfleet.v1 import admin_pb2, agent_pb2, fleet_pb2
from wire import mapping
from wire.mapping import (
    CONDITION_FROM_PB,
    CONDITION_TO_PB,
    KIND_FROM_PB,
    KIND_TO_PB,
    STATUS_TO_PB,
    health_to_pb,
    os_to_pb,
    timestamp,
)

_TEXT_MAX = 255
# A device reports a handful of reasons; more is a broken or hostile agent.
_REASONS_MAX = 32


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


def peer_address(peer: str) -> str:
    """The IP address in gRPC's peer string ("ipv4:198.18.0.5:40122",
    "ipv6:[::1]:40122"); "" for a unix socket or anything else without one."""
    family, _, rest = peer.partition(":")
    if family not in ("ipv4", "ipv6"):
        return ""
    # gRPC percent-encodes the URI, e.g. an IPv6 zone's "%" as "%25".
    host = unquote(rest).rpartition(":")[0].removeprefix("[").removesuffix("]")
    try:
        return ip_address(host)
    except ValueError:
        return ""


def _address(hello: agent_pb2.Hello, peer: str) -> str:
    """Where Ansible reaches the device: the address it names, else its stream's."""
    if not hello.management_address:
        return peer_address(peer)
    try:
        return ip_address(hello.management_address)
    except ValueError as exc:
        raise ProtocolError(f"Hello.management_address {exc}") from None


def _labels(hello: agent_pb2.Hello) -> tuple[tuple[str, str], ...]:
    try:
        return check_labels(hello.labels.items())
    except ValueError as exc:
        raise ProtocolError(f"Hello.labels: {exc}") from None


def identity_from_hello(hello: agent_pb2.Hello, peer: str = "") -> DeviceIdentity:
    """The identity a Hello claims, checked; ``peer`` is who called, its client behind
    a balancer (controller/proxied/addresses.py)."""
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
        os=_os_from_pb(hello.os) if hello.HasField("os") else None,
        address=_address(hello, peer),
        labels=_labels(hello),
    )


def _os_from_pb(o: fleet_pb2.OsInfo) -> OsInfo:
    for field in ("name", "version", "kernel"):
        _check_text(getattr(o, field), f"Hello.os.{field}")
    return mapping.os_from_pb(o)


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


_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_WIFI_MAX = 8


def report_from_pb(hb: agent_pb2.Heartbeat) -> DeviceReport | None:
    """A heartbeat's verdict and reports, checked; None from an agent that sends none."""
    if hb.condition == fleet_pb2.CONDITION_UNSPECIFIED:
        return None
    condition = CONDITION_FROM_PB.get(hb.condition)
    if condition is None:
        raise ProtocolError(f"Heartbeat.condition {hb.condition} is not a known condition")
    if len(hb.reasons) > _REASONS_MAX:
        raise ProtocolError(f"Heartbeat.reasons has more than {_REASONS_MAX} entries")
    reasons = tuple(_check_text(r, "Heartbeat.reasons[]").replace("\n", " ") for r in hb.reasons)
    return DeviceReport(
        condition=condition,
        reasons=reasons,
        # Kept in wire form: parsed already, so they are well-formed; the size limit
        # on the message bounds them. Absent in heartbeats between full reports.
        system=hb.system.SerializeToString() if hb.HasField("system") else b"",
        network=hb.network.SerializeToString() if hb.HasField("network") else b"",
        spool_pending=hb.spool.pending,
        spool_dropped=hb.spool.dropped,
        wifi=_wifi(hb.network) if hb.HasField("network") else (),
    )


def _wifi(network: fleet_pb2.NetworkReport) -> tuple[tuple[str, float | None], ...]:
    """The associations a report names; a BSSID that is not a MAC address is left out
    (the report itself is kept whole)."""
    found = []
    for w in network.wifi[:_WIFI_MAX]:
        bssid = w.bssid.strip().lower().replace("-", ":")
        if _MAC.fullmatch(bssid):
            # 0 dBm is what an interface without a reading says.
            found.append((bssid, w.signal_dbm or None))
    return tuple(found)


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
        address=d.identity.address,
        labels=dict(d.identity.labels),
    )
    if d.last_heartbeat is not None:
        out.last_heartbeat.CopyFrom(timestamp(d.last_heartbeat))
    if d.health is not None:
        out.health.CopyFrom(health_to_pb(d.health))
    if d.identity.os is not None:
        out.os.CopyFrom(os_to_pb(d.identity.os))
    out.heartbeats_stored = d.heartbeats_stored
    out.seq_gaps = d.seq_gaps
    out.recent_commands.extend(
        admin_pb2.CommandOutcome(
            command_id=c.command_id,
            status=c.status,
            message=c.message,
            finished_at=timestamp(c.finished_at),
            received_at=timestamp(c.received_at),
            seq=c.seq,
        )
        for c in d.recent_commands
    )
    if d.enrollment is not None:
        out.enrollment.CopyFrom(enrollment_to_pb(d.enrollment))
    if d.report is not None:
        out.condition = CONDITION_TO_PB[d.report.condition]
        out.reasons.extend(d.report.reasons)
        out.system.ParseFromString(d.report.system)
        out.network.ParseFromString(d.report.network)
        out.spool.pending = d.report.spool_pending
        out.spool.dropped = d.report.spool_dropped
        if d.report.report_at is not None:
            out.report_at.CopyFrom(timestamp(d.report.report_at))
    return out


def count_to_pb(c: KindCount) -> admin_pb2.KindCount:
    """The wire form of one school-and-kind count."""
    return admin_pb2.KindCount(
        school_id=c.school_id, kind=KIND_TO_PB[c.kind], online=c.online, offline=c.offline
    )


def token_to_pb(t: EnrollToken) -> admin_pb2.EnrollToken:
    """The wire form of an enrollment token (never its secret)."""
    out = admin_pb2.EnrollToken(
        token_id=t.token_id,
        school_id=t.school_id,
        uses_left=t.uses_left,
        uses=t.uses,
        expires_at=timestamp(t.expires_at),
        created_at=timestamp(t.created_at),
    )
    if t.revoked_at is not None:
        out.revoked_at.CopyFrom(timestamp(t.revoked_at))
    return out


def enrollment_to_pb(e: Enrollment) -> admin_pb2.DeviceEnrollment:
    """The wire form of a device's enrollment."""
    out = admin_pb2.DeviceEnrollment(
        device_id=e.device_id,
        school_id=e.school_id,
        serial=e.serial,
        not_after=timestamp(e.not_after),
        enrolled_at=timestamp(e.enrolled_at),
        reenroll_allowed=e.reenroll,
    )
    if e.revoked_at is not None:
        out.revoked_at.CopyFrom(timestamp(e.revoked_at))
    return out
