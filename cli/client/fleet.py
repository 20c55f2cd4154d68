"""Devices, enrollment tokens and the fleet's status: the AdminService calls behind
`schoolctl devices/show/ping/enroll-token/status`, answered as our own values."""

from __future__ import annotations

from collections.abc import Iterator

from cli.client.connection import Connection
from cli.client.values import AnsibleAccess, DeviceMove, FleetStatus
from inventory.model import (
    CommandOutcome,
    Condition,
    DeviceIdentity,
    DeviceKind,
    DeviceRecord,
    DeviceReport,
    DeviceStatus,
    Enrollment,
    EnrollToken,
    KindCount,
)
from protos.schoolfleet.v1 import admin_pb2, fleet_pb2
from wire.mapping import (
    CONDITION_FROM_PB,
    CONDITION_TO_PB,
    KIND_FROM_PB,
    KIND_TO_PB,
    STATUS_FROM_PB,
    STATUS_TO_PB,
    health_from_pb,
    os_from_pb,
    seconds,
)
from wire.uplink import check_from_pb


def device_from_pb(d: admin_pb2.Device) -> DeviceRecord:
    """Our value for a device the controller sent."""
    return DeviceRecord(
        identity=DeviceIdentity(
            device_id=d.device_id,
            kind=KIND_FROM_PB[d.kind],
            school_id=d.school_id,
            room_id=d.room_id,
            hostname=d.hostname,
            agent_version=d.agent_version,
            os=os_from_pb(d.os) if d.HasField("os") else None,
            address=d.address,
            labels=tuple(sorted(d.labels.items())),
        ),
        status=STATUS_FROM_PB.get(d.status, DeviceStatus.OFFLINE),
        stream_up=d.stream_up,
        first_seen=seconds(d.first_seen),
        last_heartbeat=seconds(d.last_heartbeat) if d.HasField("last_heartbeat") else None,
        offline_after=float(d.offline_after_seconds),
        last_seq=d.last_seq,
        health=health_from_pb(d.health) if d.HasField("health") else None,
        report=_report_from_pb(d),
        heartbeats_stored=d.heartbeats_stored,
        seq_gaps=d.seq_gaps,
        enrollment=_enrollment_from_pb(d.enrollment) if d.HasField("enrollment") else None,
        recent_commands=tuple(
            CommandOutcome(
                command_id=c.command_id,
                status=c.status,
                message=c.message,
                finished_at=seconds(c.finished_at),
                received_at=seconds(c.received_at),
                seq=c.seq,
            )
            for c in d.recent_commands
        ),
    )


def _enrollment_from_pb(e: admin_pb2.DeviceEnrollment) -> Enrollment:
    return Enrollment(
        device_id=e.device_id,
        school_id=e.school_id,
        serial=e.serial,
        not_after=seconds(e.not_after),
        enrolled_at=seconds(e.enrolled_at),
        token_id="",
        reenroll=e.reenroll_allowed,
        revoked_at=seconds(e.revoked_at) if e.HasField("revoked_at") else None,
    )


def token_from_pb(t: admin_pb2.EnrollToken) -> EnrollToken:
    """Our value for an enrollment token the controller sent."""
    return EnrollToken(
        token_id=t.token_id,
        school_id=t.school_id,
        uses_left=t.uses_left,
        uses=t.uses,
        expires_at=seconds(t.expires_at),
        created_at=seconds(t.created_at),
        revoked_at=seconds(t.revoked_at) if t.HasField("revoked_at") else None,
    )


def _report_from_pb(d: admin_pb2.Device) -> DeviceReport | None:
    condition = CONDITION_FROM_PB.get(d.condition)
    if condition is None:
        return None
    return DeviceReport(
        condition=condition,
        reasons=tuple(d.reasons),
        system=d.system.SerializeToString(),
        network=d.network.SerializeToString(),
        spool_pending=d.spool.pending,
        spool_dropped=d.spool.dropped,
        report_at=seconds(d.report_at) if d.HasField("report_at") else None,
    )


class FleetClient:
    """Devices, their enrollment tokens and the fleet's status, as our own values."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def devices(
        self,
        school_id: str | None = None,
        kind: DeviceKind | None = None,
        status: DeviceStatus | None = None,
        condition: Condition | None = None,
        page_size: int = 1000,
    ) -> Iterator[DeviceRecord]:
        """Every device matching the filters, fetched page by page."""
        request = admin_pb2.ListDevicesRequest(
            school_id=school_id or "",
            kind=KIND_TO_PB[kind] if kind else fleet_pb2.DEVICE_KIND_UNSPECIFIED,
            status=STATUS_TO_PB[status] if status else admin_pb2.DEVICE_STATUS_UNSPECIFIED,
            condition=CONDITION_TO_PB[condition] if condition else fleet_pb2.CONDITION_UNSPECIFIED,
            page_size=page_size,
        )
        while True:
            response = self._conn.call(self._conn.stub.ListDevices, request)
            yield from (device_from_pb(d) for d in response.devices)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def device(self, device_id: str) -> DeviceRecord:
        """One device; NotFound if the controller does not know it."""
        response = self._conn.call(
            self._conn.stub.GetDevice, admin_pb2.GetDeviceRequest(device_id=device_id)
        )
        return device_from_pb(response)

    def ansible_access(self) -> AnsibleAccess:
        """The controller's SSH user, devices' Python and host keys for your devices."""
        access = self._conn.call(
            self._conn.stub.GetAnsibleAccess, admin_pb2.GetAnsibleAccessRequest()
        )
        return AnsibleAccess(access.ssh_user, access.python_interpreter, tuple(access.known_hosts))

    def ping(self, device_id: str) -> tuple[str, float]:
        """Sends a ping to the device; returns the command id and when it was issued."""
        response = self._conn.call(
            self._conn.stub.PingDevice, admin_pb2.PingDeviceRequest(device_id=device_id)
        )
        return response.command_id, seconds(response.issued_at)

    def create_enroll_token(
        self, school_id: str, uses: int, valid_seconds: int
    ) -> tuple[EnrollToken, str]:
        """A new token for the school and its secret (shown once)."""
        request = admin_pb2.CreateEnrollTokenRequest(
            school_id=school_id, uses=uses, valid_seconds=valid_seconds
        )
        response = self._conn.call(self._conn.stub.CreateEnrollToken, request)
        return token_from_pb(response.token), response.secret

    def enroll_tokens(self, school_id: str | None) -> list[EnrollToken]:
        """Tokens of one school, or all."""
        request = admin_pb2.ListEnrollTokensRequest(school_id=school_id or "")
        response = self._conn.call(self._conn.stub.ListEnrollTokens, request)
        return [token_from_pb(t) for t in response.tokens]

    def revoke_enroll_token(self, token_id: str) -> EnrollToken:
        """Revokes a token; NotFound if there is none."""
        request = admin_pb2.RevokeEnrollTokenRequest(token_id=token_id)
        return token_from_pb(self._conn.call(self._conn.stub.RevokeEnrollToken, request))

    def reenroll(self, device_id: str) -> Enrollment:
        """Lets the device enroll again."""
        request = admin_pb2.GetDeviceRequest(device_id=device_id)
        return _enrollment_from_pb(self._conn.call(self._conn.stub.ReenrollDevice, request))

    def move(self, device_id: str, school_id: str) -> DeviceMove:
        """Puts the device in another school (central ops only)."""
        request = admin_pb2.MoveDeviceRequest(device_id=device_id, school_id=school_id)
        moved = self._conn.call(self._conn.stub.MoveDevice, request)
        return DeviceMove(moved.device_id, moved.from_school_id, moved.to_school_id)

    def decommission(self, device_id: str) -> Enrollment:
        """Revokes the device's certificate and closes its stream."""
        request = admin_pb2.GetDeviceRequest(device_id=device_id)
        return _enrollment_from_pb(self._conn.call(self._conn.stub.DecommissionDevice, request))

    def status(self, school_id: str | None = None) -> FleetStatus:
        """Online/offline counts per school and kind, when they were computed, and the
        schools measured under the uplink target."""
        response = self._conn.call(
            self._conn.stub.FleetStatus, admin_pb2.FleetStatusRequest(school_id=school_id or "")
        )
        counts = [
            KindCount(c.school_id, KIND_FROM_PB[c.kind], c.online, c.offline)
            for c in response.counts
        ]
        return FleetStatus(
            counts,
            seconds(response.computed_at),
            response.uplink_target_mbps,
            [check_from_pb(c) for c in response.slow_uplinks],
        )
