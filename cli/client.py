"""The AdminService client: gRPC in, our own values and CliErrors out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar, cast

import grpc

from cli.client_infra import InfraCalls
from cli.client_rollouts import RolloutCalls
from cli.client_uplink import UplinkCalls
from cli.config import config_path
from cli.errors import (
    CliError,
    ControllerUnreachable,
    DeviceUnavailable,
    NotAllowed,
    NotFound,
    NotLoggedIn,
    RequestRefused,
)
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
from inventory.people import AuditEntry, Role, User
from inventory.uplink import UplinkCheck
from protos.schoolfleet.v1 import admin_pb2, admin_pb2_grpc, fleet_pb2
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
from wire.people import ROLE_TO_PB, audit_from_pb, user_from_pb
from wire.uplink import check_from_pb

_MAX_MESSAGE = 16 * 1024 * 1024
# Requests are a few ids and filters, or a part of a schedule or inventory (cli/imports.py
# sends at most 512 KiB of rows at once; the controller takes up to 1 MiB).
_MAX_SEND = 1024 * 1024
Req = TypeVar("Req")
Resp = TypeVar("Resp")


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


def _why_unreachable(code: grpc.StatusCode, details: str) -> str:
    """gRPC's connection details run to several lines; a user needs a few words."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    for needle, words in (
        ("Connection refused", "connection refused"),
        ("DNS resolution failed", "name does not resolve"),
        ("Timeout occurred", "connection timed out"),
    ):
        if needle in details:
            return words
    return details.splitlines()[0][:120] if details else "unavailable"


# The controller's refusals whose details are already the line a user should read.
_ERRORS: dict[grpc.StatusCode, type[CliError]] = {
    grpc.StatusCode.PERMISSION_DENIED: NotAllowed,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: RequestRefused,
    grpc.StatusCode.ALREADY_EXISTS: RequestRefused,
    grpc.StatusCode.FAILED_PRECONDITION: DeviceUnavailable,
}


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """What `schoolctl status` shows: device counts, and the schools whose latest
    uplink measurement is under the target."""

    counts: list[KindCount]
    computed_at: float
    uplink_target_mbps: float
    slow_uplinks: list[UplinkCheck]


class AdminClient(RolloutCalls, UplinkCalls, InfraCalls):
    """Talks to one controller's AdminService; every failure becomes a CliError."""

    def __init__(
        self,
        address: str,
        timeout: float,
        ca_cert: bytes | None = None,
        token: str | None = None,
    ) -> None:
        self.address = address
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_SEND),
        ]
        if ca_cert is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            tls = grpc.ssl_channel_credentials(root_certificates=ca_cert)
            self._channel = grpc.secure_channel(address, tls, options=options)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._channel.close()

    def _error(self, exc: grpc.RpcError) -> CliError:
        # Errors raised by a call are also grpc.Call objects, which the stubs cannot express.
        call = cast(grpc.Call, exc)
        code = call.code()
        details = call.details() or code.name
        if not self._metadata:
            # Without a token nothing is answered: that, not the port, is what to fix
            # (with no login file the default address is often not the admin port).
            return self._not_logged_in(code)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = _why_unreachable(code, details)
            return ControllerUnreachable(
                f"cannot reach the controller at {self.address} ({why}); "
                "is it running? (set --controller or SCHOOLCTL_CONTROLLER)"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return NotAllowed(
                f"the controller at {self.address} did not accept your token ({details}); "
                "get one from central ops and run 'schoolctl login'"
            )
        kind = _ERRORS.get(code)
        if kind is not None:
            return kind(details)
        return CliError(f"controller at {self.address} answered {code.name}: {details}")

    def _not_logged_in(self, code: grpc.StatusCode) -> NotLoggedIn:
        unanswered = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return NotLoggedIn(
            f"not logged in: no token in $SCHOOLCTL_TOKEN or {config_path(os.environ)}; "
            "run 'schoolctl --controller HOST:PORT --ca-cert CA_CERT login' with a token "
            "from central ops"
            + (f" (and the controller at {self.address} did not answer)" if unanswered else "")
        )

    def _call(self, rpc: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        try:
            return rpc(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

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
            response = self._call(self._stub.ListDevices, request)
            yield from (device_from_pb(d) for d in response.devices)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def device(self, device_id: str) -> DeviceRecord:
        """One device; NotFound if the controller does not know it."""
        response = self._call(self._stub.GetDevice, admin_pb2.GetDeviceRequest(device_id=device_id))
        return device_from_pb(response)

    def ansible_access(self) -> admin_pb2.AnsibleAccess:
        """The controller's SSH user, devices' Python and host keys for your devices."""
        return self._call(self._stub.GetAnsibleAccess, admin_pb2.GetAnsibleAccessRequest())

    def ping(self, device_id: str) -> tuple[str, float]:
        """Sends a ping to the device; returns the command id and when it was issued."""
        response = self._call(
            self._stub.PingDevice, admin_pb2.PingDeviceRequest(device_id=device_id)
        )
        return response.command_id, seconds(response.issued_at)

    def create_enroll_token(
        self, school_id: str, uses: int, valid_seconds: int
    ) -> tuple[EnrollToken, str]:
        """A new token for the school and its secret (shown once)."""
        request = admin_pb2.CreateEnrollTokenRequest(
            school_id=school_id, uses=uses, valid_seconds=valid_seconds
        )
        response = self._call(self._stub.CreateEnrollToken, request)
        return token_from_pb(response.token), response.secret

    def enroll_tokens(self, school_id: str | None) -> list[EnrollToken]:
        """Tokens of one school, or all."""
        request = admin_pb2.ListEnrollTokensRequest(school_id=school_id or "")
        response = self._call(self._stub.ListEnrollTokens, request)
        return [token_from_pb(t) for t in response.tokens]

    def revoke_enroll_token(self, token_id: str) -> EnrollToken:
        """Revokes a token; NotFound if there is none."""
        request = admin_pb2.RevokeEnrollTokenRequest(token_id=token_id)
        return token_from_pb(self._call(self._stub.RevokeEnrollToken, request))

    def reenroll(self, device_id: str) -> admin_pb2.DeviceEnrollment:
        """Lets the device enroll again."""
        return self._call(
            self._stub.ReenrollDevice, admin_pb2.GetDeviceRequest(device_id=device_id)
        )

    def move(self, device_id: str, school_id: str) -> admin_pb2.DeviceMove:
        """Puts the device in another school (central ops only)."""
        request = admin_pb2.MoveDeviceRequest(device_id=device_id, school_id=school_id)
        return self._call(self._stub.MoveDevice, request)

    def decommission(self, device_id: str) -> admin_pb2.DeviceEnrollment:
        """Revokes the device's certificate and closes its stream."""
        return self._call(
            self._stub.DecommissionDevice, admin_pb2.GetDeviceRequest(device_id=device_id)
        )

    def fleet_status(self, school_id: str | None = None) -> FleetStatus:
        """Online/offline counts per school and kind, when they were computed, and the
        schools measured under the uplink target."""
        response = self._call(
            self._stub.FleetStatus, admin_pb2.FleetStatusRequest(school_id=school_id or "")
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

    def whoami(self) -> User:
        """The user the token belongs to."""
        return user_from_pb(self._call(self._stub.WhoAmI, admin_pb2.WhoAmIRequest()))

    def create_user(
        self, name: str, role: Role, schools: list[str], valid_seconds: int
    ) -> tuple[User, str]:
        """A new user and their token (shown once)."""
        request = admin_pb2.CreateUserRequest(
            name=name, role=ROLE_TO_PB[role], school_ids=schools, valid_seconds=valid_seconds
        )
        response = self._call(self._stub.CreateUser, request)
        return user_from_pb(response.user), response.token

    def users(self) -> list[User]:
        """Every user, revoked ones too."""
        response = self._call(self._stub.ListUsers, admin_pb2.ListUsersRequest())
        return [user_from_pb(u) for u in response.users]

    def revoke_user(self, name: str) -> User:
        """Revokes the user's token."""
        return user_from_pb(
            self._call(self._stub.RevokeUser, admin_pb2.RevokeUserRequest(name=name))
        )

    def audit(self, request: admin_pb2.ListAuditRequest) -> list[AuditEntry]:
        """Audit entries matching the request's filters, newest first."""
        response = self._call(self._stub.ListAudit, request)
        return [audit_from_pb(e) for e in response.entries]

    def import_lessons(
        self, source: str, lessons: list[admin_pb2.ScheduledLesson], dry_run: bool
    ) -> admin_pb2.ImportLessonsResponse:
        """Sends schedule rows; the answer counts what changed and lists refused rows."""
        request = admin_pb2.ImportLessonsRequest(source=source, lessons=lessons, dry_run=dry_run)
        return self._call(self._stub.ImportLessons, request)

    def lessons(self, school_id: str | None, room_id: str | None) -> admin_pb2.ListLessonsResponse:
        """Today's lessons (the controller's time zone), of one school or room, or all."""
        request = admin_pb2.ListLessonsRequest(school_id=school_id or "", room_id=room_id or "")
        return self._call(self._stub.ListLessons, request)

    def launch_lesson(self, request: admin_pb2.LaunchLessonRequest) -> admin_pb2.LessonInfo:
        """A lesson by hand, now: the room's panels open the URL."""
        return self._call(self._stub.LaunchLesson, request)
