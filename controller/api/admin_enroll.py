"""AdminService's enrollment: enroll tokens (create, list, revoke), and a device let
enroll again, decommissioned, or moved to another school."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from common.secret_hash import hash_secret
from controller.api.convert import enrollment_to_pb, token_to_pb
from controller.api.device_access import DeviceAccess, check_id, check_school_filter
from controller.api.guard import Call, Guard, Refused, guarded, invalid, not_found
from controller.enroll import tokens as enrollment
from controller.enroll.store import EnrollTokenStore
from controller.errors import HostsClaimed
from controller.fleet.sessions import Closing, SessionRegistry
from controller.people.access import Need
from inventory.people import Outcome
from protos.schoolfleet.v1 import admin_pb2, agent_pb2


class EnrollAdmin:
    """Enroll tokens and what changes a device's enrollment; a change that ends what the
    device may do closes its stream."""

    def __init__(
        self,
        guard: Guard,
        enrollments: EnrollTokenStore,
        device_access: DeviceAccess,
        sessions: SessionRegistry[agent_pb2.ControllerMessage],
    ) -> None:
        self.guard = guard
        self._enrollments = enrollments
        self._access = device_access
        self._sessions = sessions

    @guarded("enroll-tokens.create", Need.CHANGE, audited=True)
    async def CreateEnrollToken(
        self, request: admin_pb2.CreateEnrollTokenRequest, call: Call
    ) -> admin_pb2.CreateEnrollTokenResponse:
        check_id(request.school_id, "school id")
        call.allow(Need.CHANGE, request.school_id)
        token, secret = enrollment.mint(
            request.school_id, request.uses, request.valid_seconds, self.guard.now()
        )
        await self.guard.off_loop(self._enrollments.add_enroll_token, token, hash_secret(secret))
        call.target = token.token_id
        expires = datetime.fromtimestamp(token.expires_at, UTC).isoformat(timespec="seconds")
        call.done = f"{token.uses_left} use(s), expires {expires}"
        return admin_pb2.CreateEnrollTokenResponse(token=token_to_pb(token), secret=secret)

    @guarded("enroll-tokens.list", Need.READ)
    async def ListEnrollTokens(
        self, request: admin_pb2.ListEnrollTokensRequest, call: Call
    ) -> admin_pb2.ListEnrollTokensResponse:
        check_school_filter(request.school_id)
        call.target = request.school_id
        call.allow(Need.READ, request.school_id or None)
        tokens = await self.guard.off_loop(
            self._enrollments.list_enroll_tokens, request.school_id or None
        )
        scope = call.who.scope
        return admin_pb2.ListEnrollTokensResponse(
            tokens=[token_to_pb(t) for t in tokens if scope is None or t.school_id in scope]
        )

    @guarded("enroll-tokens.revoke", Need.CHANGE, audited=True)
    async def RevokeEnrollToken(
        self, request: admin_pb2.RevokeEnrollTokenRequest, call: Call
    ) -> admin_pb2.EnrollToken:
        check_id(request.token_id, "token id")
        call.target = request.token_id
        token = await self.guard.off_loop(self._enrollments.get_enroll_token, request.token_id)
        schools = None if token is None else [token.school_id]
        call.allow_target(Need.CHANGE, schools, f"enroll token {request.token_id!r}")
        revoked = await self.guard.off_loop(
            self._enrollments.revoke_enroll_token, request.token_id, self.guard.now()
        )
        if revoked is None:
            raise not_found(f"no enroll token {request.token_id!r}")
        call.done = "revoked"
        return token_to_pb(revoked)

    @guarded("devices.reenroll", Need.CHANGE, audited=True)
    async def ReenrollDevice(
        self, request: admin_pb2.GetDeviceRequest, call: Call
    ) -> admin_pb2.DeviceEnrollment:
        await self._access.allow(call, Need.CHANGE, request.device_id)
        enrolled = await self.guard.off_loop(self._enrollments.allow_reenroll, request.device_id)
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
        await self._access.allow(call, Need.CHANGE, request.device_id)
        revoked = await self.guard.off_loop(
            self._enrollments.decommission, request.device_id, self.guard.now()
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
        check_id(request.device_id, "device id")
        check_id(request.school_id, "school id")
        try:
            moved = await self.guard.off_loop(
                self._enrollments.move_device,
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
