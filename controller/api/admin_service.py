"""AdminService: what schoolctl asks of the controller: fleet queries and changes.

Every method is ``guarded`` (controller/api/guard.py): the caller's token, role
and schools are checked, and changes and denials go to the audit log.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc

from common.secret_hash import hash_secret
from controller.api.admin_infra import InfraHandlers
from controller.api.admin_lessons import LessonHandlers
from controller.api.admin_people import PeopleHandlers
from controller.api.admin_rollouts import RolloutHandlers
from controller.api.admin_uplink import UplinkHandlers
from controller.api.convert import count_to_pb, device_to_pb, enrollment_to_pb, token_to_pb
from controller.api.guard import Call, Guard, Refused, guarded, invalid, not_found
from controller.enroll import tokens as enrollment
from controller.errors import HostsClaimed
from controller.fleet.sessions import Closing, SessionRegistry
from controller.fleet.store import DeviceQuery
from controller.lessons.dispatcher import Dispatcher
from controller.people.access import Need
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.runner import RunnerSettings
from controller.stores import Stores
from controller.uplink.checks import UplinkChecks
from inventory.model import valid_id
from inventory.people import Outcome
from protos.schoolfleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, fleet_pb2
from wire.mapping import CONDITION_FROM_PB, KIND_FROM_PB, STATUS_FROM_PB, timestamp

log = logging.getLogger(__name__)

_UTC = ZoneInfo("UTC")
PAGE_DEFAULT = 500
PAGE_MAX = 1000


def _check_id(value: str, what: str) -> None:
    if not valid_id(value):
        raise invalid(f"{what} {value[:80]!r} is not valid")


def _check_school_filter(school_id: str) -> None:
    if school_id:
        _check_id(school_id, "school id")


class AdminService(
    PeopleHandlers,
    LessonHandlers,
    RolloutHandlers,
    UplinkHandlers,
    InfraHandlers,
    admin_pb2_grpc.AdminServiceServicer,
):
    """Fleet queries and changes for schoolctl, answered from the store."""

    def __init__(
        self,
        stores: Stores,
        guard: Guard,
        sessions: SessionRegistry[agent_pb2.ControllerMessage],
        *,
        dispatcher: Dispatcher | None = None,
        content_hosts: Iterable[str] = (),
        zone: ZoneInfo = _UTC,
        rollouts: RolloutEngine | None = None,
        playbooks_dir: Path = Path(),
        runner_settings: RunnerSettings | None = None,
        uplink: UplinkChecks | None = None,
        uplink_target_mbps: float = 100.0,
    ) -> None:
        self._stores = stores
        self.guard = guard
        self._sessions = sessions
        self.dispatcher = dispatcher
        self.content_hosts = frozenset(content_hosts)
        self.zone = zone
        self.rollouts = rollouts
        self.playbooks_dir = playbooks_dir
        self.runner_settings = runner_settings
        self.uplink = uplink
        self.uplink_target_mbps = uplink_target_mbps

    async def _device_school(self, device_id: str) -> str | None:
        """The school of a device the store knows (enrolled or seen), or None."""
        _check_id(device_id, "device id")
        enrolled = await self.guard.off_loop(self._stores.enrollments.get_enrollment, device_id)
        if enrolled is not None:
            return enrolled.school_id
        device = await self.guard.off_loop(
            self._stores.devices.get_device, device_id, self.guard.now()
        )
        return device.identity.school_id if device is not None else None

    async def _allow_device(self, call: Call, need: Need, device_id: str) -> None:
        """Refuses unless the caller may ``need`` the device; to a scoped caller,
        another school's device and none at all look the same."""
        call.target = device_id
        school = await self._device_school(device_id)
        call.allow_target(need, None if school is None else [school], f"device {device_id!r}")

    @guarded("devices.list", Need.READ)
    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, call: Call
    ) -> admin_pb2.ListDevicesResponse:
        _check_school_filter(request.school_id)
        call.target = request.school_id
        call.allow(Need.READ, request.school_id or None)
        if request.kind != fleet_pb2.DEVICE_KIND_UNSPECIFIED and request.kind not in KIND_FROM_PB:
            raise invalid(f"device kind {request.kind} is not known")
        if (
            request.status != admin_pb2.DEVICE_STATUS_UNSPECIFIED
            and request.status not in STATUS_FROM_PB
        ):
            raise invalid(f"device status {request.status} is not known")
        if (
            request.condition != fleet_pb2.CONDITION_UNSPECIFIED
            and request.condition not in CONDITION_FROM_PB
        ):
            raise invalid(f"device condition {request.condition} is not known")
        limit = min(request.page_size or PAGE_DEFAULT, PAGE_MAX)
        query = DeviceQuery(
            school_id=request.school_id or None,
            kind=KIND_FROM_PB.get(request.kind),
            status=STATUS_FROM_PB.get(request.status),
            condition=CONDITION_FROM_PB.get(request.condition),
            schools=call.who.scope,
            after_id=request.page_token,
            limit=limit,
        )
        devices = await self.guard.off_loop(
            self._stores.devices.list_devices, query, self.guard.now()
        )
        return admin_pb2.ListDevicesResponse(
            devices=[device_to_pb(d) for d in devices],
            next_page_token=devices[-1].identity.device_id if len(devices) == limit else "",
        )

    @guarded("devices.show", Need.READ)
    async def GetDevice(self, request: admin_pb2.GetDeviceRequest, call: Call) -> admin_pb2.Device:
        _check_id(request.device_id, "device id")
        call.target = request.device_id
        device = await self.guard.off_loop(
            self._stores.devices.get_device, request.device_id, self.guard.now()
        )
        schools = None if device is None else [device.identity.school_id]
        call.allow_target(Need.READ, schools, f"device {request.device_id!r}")
        assert device is not None
        return device_to_pb(device)

    @guarded("devices.ping", Need.CHANGE, audited=True)
    async def PingDevice(
        self, request: admin_pb2.PingDeviceRequest, call: Call
    ) -> admin_pb2.PingDeviceResponse:
        await self._allow_device(call, Need.CHANGE, request.device_id)
        session = self._sessions.get(request.device_id)
        if session is None:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {request.device_id!r} is not connected; a ping needs its stream up",
                Outcome.FAILED,
            )
        issued_at = timestamp(self.guard.now())
        command_id = f"ping-{uuid.uuid4().hex[:16]}"
        session.send(
            agent_pb2.ControllerMessage(
                command=agent_pb2.Command(
                    command_id=command_id, issued_at=issued_at, ping=agent_pb2.Ping()
                )
            )
        )
        call.done = f"ping {command_id} sent"
        return admin_pb2.PingDeviceResponse(command_id=command_id, issued_at=issued_at)

    @guarded("enroll-tokens.create", Need.CHANGE, audited=True)
    async def CreateEnrollToken(
        self, request: admin_pb2.CreateEnrollTokenRequest, call: Call
    ) -> admin_pb2.CreateEnrollTokenResponse:
        _check_id(request.school_id, "school id")
        call.allow(Need.CHANGE, request.school_id)
        token, secret = enrollment.mint(
            request.school_id, request.uses, request.valid_seconds, self.guard.now()
        )
        await self.guard.off_loop(
            self._stores.enrollments.add_enroll_token, token, hash_secret(secret)
        )
        call.target = token.token_id
        expires = datetime.fromtimestamp(token.expires_at, UTC).isoformat(timespec="seconds")
        call.done = f"{token.uses_left} use(s), expires {expires}"
        return admin_pb2.CreateEnrollTokenResponse(token=token_to_pb(token), secret=secret)

    @guarded("enroll-tokens.list", Need.READ)
    async def ListEnrollTokens(
        self, request: admin_pb2.ListEnrollTokensRequest, call: Call
    ) -> admin_pb2.ListEnrollTokensResponse:
        _check_school_filter(request.school_id)
        call.target = request.school_id
        call.allow(Need.READ, request.school_id or None)
        tokens = await self.guard.off_loop(
            self._stores.enrollments.list_enroll_tokens, request.school_id or None
        )
        scope = call.who.scope
        return admin_pb2.ListEnrollTokensResponse(
            tokens=[token_to_pb(t) for t in tokens if scope is None or t.school_id in scope]
        )

    @guarded("enroll-tokens.revoke", Need.CHANGE, audited=True)
    async def RevokeEnrollToken(
        self, request: admin_pb2.RevokeEnrollTokenRequest, call: Call
    ) -> admin_pb2.EnrollToken:
        _check_id(request.token_id, "token id")
        call.target = request.token_id
        token = await self.guard.off_loop(
            self._stores.enrollments.get_enroll_token, request.token_id
        )
        schools = None if token is None else [token.school_id]
        call.allow_target(Need.CHANGE, schools, f"enroll token {request.token_id!r}")
        revoked = await self.guard.off_loop(
            self._stores.enrollments.revoke_enroll_token, request.token_id, self.guard.now()
        )
        if revoked is None:
            raise not_found(f"no enroll token {request.token_id!r}")
        call.done = "revoked"
        return token_to_pb(revoked)

    @guarded("devices.reenroll", Need.CHANGE, audited=True)
    async def ReenrollDevice(
        self, request: admin_pb2.GetDeviceRequest, call: Call
    ) -> admin_pb2.DeviceEnrollment:
        await self._allow_device(call, Need.CHANGE, request.device_id)
        enrolled = await self.guard.off_loop(
            self._stores.enrollments.allow_reenroll, request.device_id
        )
        if enrolled is None:
            raise not_found(
                f"device {request.device_id!r} has never enrolled: it needs only a token"
            )
        call.done = "may enroll again"
        return enrollment_to_pb(enrolled)

    @guarded("devices.decommission", Need.CHANGE, audited=True)
    async def DecommissionDevice(
        self, request: admin_pb2.GetDeviceRequest, call: Call
    ) -> admin_pb2.DeviceEnrollment:
        await self._allow_device(call, Need.CHANGE, request.device_id)
        revoked = await self.guard.off_loop(
            self._stores.enrollments.decommission, request.device_id, self.guard.now()
        )
        if revoked is None:
            raise not_found(f"no device {request.device_id!r}")
        session = self._sessions.get(request.device_id)
        if session is not None:
            session.close(
                Closing(
                    "decommissioned",
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"device {request.device_id} is decommissioned",
                )
            )
        call.done = f"certificate {revoked.serial or '-'} revoked, stream closed"
        return enrollment_to_pb(revoked)

    @guarded("devices.move", Need.ADMIN, audited=True)
    async def MoveDevice(
        self, request: admin_pb2.MoveDeviceRequest, call: Call
    ) -> admin_pb2.DeviceMove:
        # Central ops only (the guard checked the role), who see every school: the
        # store's answer is the existence check, in the move's own transaction.
        call.target = request.device_id
        _check_id(request.device_id, "device id")
        _check_id(request.school_id, "school id")
        try:
            moved = await self.guard.off_loop(
                self._stores.enrollments.move_device,
                request.device_id,
                request.school_id,
                self.guard.now(),
            )
        except HostsClaimed as exc:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {request.device_id} is in rollout {exc.claims[request.device_id]}, "
                "which has not finished: abort it or let it finish first",
                Outcome.FAILED,
            ) from None
        if moved is None:
            raise not_found(f"no device {request.device_id!r}")
        # In the audit of the school that lost it (the message names both).
        call.school_id = moved.from_school
        if moved.from_school == moved.to_school:
            raise invalid(f"device {request.device_id!r} is already in school {moved.to_school}")
        session = self._sessions.get(request.device_id)
        if session is not None:
            session.close(
                Closing(
                    "moved",
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"device {request.device_id} moved to another school; "
                    "it must enroll with a token of its school",
                )
            )
        call.done = f"moved from school {moved.from_school} to {moved.to_school}"
        return admin_pb2.DeviceMove(
            device_id=moved.device_id,
            from_school_id=moved.from_school,
            to_school_id=moved.to_school,
        )

    @guarded("status", Need.READ)
    async def FleetStatus(
        self, request: admin_pb2.FleetStatusRequest, call: Call
    ) -> admin_pb2.FleetStatusResponse:
        _check_school_filter(request.school_id)
        call.target = request.school_id
        call.allow(Need.READ, request.school_id or None)
        now = self.guard.now()
        counts = await self.guard.off_loop(
            self._stores.devices.fleet_counts, now, request.school_id or None
        )
        scope = call.who.scope
        return admin_pb2.FleetStatusResponse(
            counts=[count_to_pb(c) for c in counts if scope is None or c.school_id in scope],
            computed_at=timestamp(now),
            uplink_target_mbps=self.uplink_target_mbps,
            slow_uplinks=await self._slow_uplinks(request.school_id or None, call),
        )


def add_to_server(service: AdminService, server: grpc.aio.Server) -> None:
    """Registers the admin API on ``server``."""
    admin_pb2_grpc.add_AdminServiceServicer_to_server(service, server)
