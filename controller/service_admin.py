"""AdminService: what schoolctl asks of the controller: fleet queries, and a ping."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from controller import enrollment
from controller.errors import ProtocolError, StoreError
from controller.service_convert import count_to_pb, device_to_pb, enrollment_to_pb, token_to_pb
from controller.sessions import Closing, SessionRegistry
from controller.store import DeviceStore
from controller.store.protocol import DeviceQuery, EnrollTokenStore
from inventory.model import valid_id
from protos.mapping import CONDITION_FROM_PB, KIND_FROM_PB, STATUS_FROM_PB, timestamp
from protos.schoolfleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, fleet_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

PAGE_DEFAULT = 500
PAGE_MAX = 1000


async def _invalid(context: Context, message: str) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    """Fleet queries for schoolctl, answered from the store."""

    def __init__(
        self,
        store: DeviceStore,
        read_executor: ThreadPoolExecutor,
        sessions: SessionRegistry[agent_pb2.ControllerMessage],
        tokens: EnrollTokenStore,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._executor = read_executor
        self._sessions = sessions
        self._now = now

    async def _read(self, context: Context, fn: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"controller store unavailable: {exc}")
            raise AssertionError("abort returns only by raising") from exc

    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, context: Context
    ) -> admin_pb2.ListDevicesResponse:
        if request.school_id and not valid_id(request.school_id):
            await _invalid(context, f"school id {request.school_id[:80]!r} is not valid")
        if request.kind != fleet_pb2.DEVICE_KIND_UNSPECIFIED and request.kind not in KIND_FROM_PB:
            await _invalid(context, f"device kind {request.kind} is not known")
        if (
            request.status != admin_pb2.DEVICE_STATUS_UNSPECIFIED
            and request.status not in STATUS_FROM_PB
        ):
            await _invalid(context, f"device status {request.status} is not known")
        if (
            request.condition != fleet_pb2.CONDITION_UNSPECIFIED
            and request.condition not in CONDITION_FROM_PB
        ):
            await _invalid(context, f"device condition {request.condition} is not known")
        limit = min(request.page_size or PAGE_DEFAULT, PAGE_MAX)
        query = DeviceQuery(
            school_id=request.school_id or None,
            kind=KIND_FROM_PB.get(request.kind),
            status=STATUS_FROM_PB.get(request.status),
            condition=CONDITION_FROM_PB.get(request.condition),
            after_id=request.page_token,
            limit=limit,
        )
        devices = await self._read(context, self._store.list_devices, query, self._now())
        return admin_pb2.ListDevicesResponse(
            devices=[device_to_pb(d) for d in devices],
            next_page_token=devices[-1].identity.device_id if len(devices) == limit else "",
        )

    async def GetDevice(
        self, request: admin_pb2.GetDeviceRequest, context: Context
    ) -> admin_pb2.Device:
        if not valid_id(request.device_id):
            await _invalid(context, f"device id {request.device_id[:80]!r} is not valid")
        device = await self._read(context, self._store.get_device, request.device_id, self._now())
        if device is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_id!r}")
            raise AssertionError("abort returns only by raising")
        return device_to_pb(device)

    async def PingDevice(
        self, request: admin_pb2.PingDeviceRequest, context: Context
    ) -> admin_pb2.PingDeviceResponse:
        if not valid_id(request.device_id):
            await _invalid(context, f"device id {request.device_id[:80]!r} is not valid")
        session = self._sessions.get(request.device_id)
        if session is None:
            known = await self._read(
                context, self._store.get_device, request.device_id, self._now()
            )
            if known is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_id!r}")
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {request.device_id!r} is not connected; a ping needs its stream up",
            )
            raise AssertionError("abort returns only by raising")
        issued_at = timestamp(self._now())
        command_id = f"ping-{uuid.uuid4().hex[:16]}"
        session.send(
            agent_pb2.ControllerMessage(
                command=agent_pb2.Command(
                    command_id=command_id, issued_at=issued_at, ping=agent_pb2.Ping()
                )
            )
        )
        log.info("command sent device=%s cmd=%s action=ping", request.device_id, command_id)
        return admin_pb2.PingDeviceResponse(command_id=command_id, issued_at=issued_at)

    async def CreateEnrollToken(
        self, request: admin_pb2.CreateEnrollTokenRequest, context: Context
    ) -> admin_pb2.CreateEnrollTokenResponse:
        try:
            token, secret = enrollment.mint(
                request.school_id, request.uses, request.valid_seconds, self._now()
            )
        except ProtocolError as exc:
            await _invalid(context, str(exc))
            raise AssertionError("abort returns only by raising") from exc
        await self._read(
            context, self._tokens.add_enroll_token, token, enrollment.hash_secret(secret)
        )
        log.info(
            "enroll token created token=%s school=%s uses=%d expires_at=%.0f",
            token.token_id,
            token.school_id,
            token.uses_left,
            token.expires_at,
        )
        return admin_pb2.CreateEnrollTokenResponse(token=token_to_pb(token), secret=secret)

    async def ListEnrollTokens(
        self, request: admin_pb2.ListEnrollTokensRequest, context: Context
    ) -> admin_pb2.ListEnrollTokensResponse:
        if request.school_id and not valid_id(request.school_id):
            await _invalid(context, f"school id {request.school_id[:80]!r} is not valid")
        tokens = await self._read(
            context, self._tokens.list_enroll_tokens, request.school_id or None
        )
        return admin_pb2.ListEnrollTokensResponse(tokens=[token_to_pb(t) for t in tokens])

    async def RevokeEnrollToken(
        self, request: admin_pb2.RevokeEnrollTokenRequest, context: Context
    ) -> admin_pb2.EnrollToken:
        if not valid_id(request.token_id):
            await _invalid(context, f"token id {request.token_id[:80]!r} is not valid")
        token = await self._read(
            context, self._tokens.revoke_enroll_token, request.token_id, self._now()
        )
        if token is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no enroll token {request.token_id!r}")
            raise AssertionError("abort returns only by raising")
        log.info("enroll token revoked token=%s school=%s", token.token_id, token.school_id)
        return token_to_pb(token)

    async def ReenrollDevice(
        self, request: admin_pb2.GetDeviceRequest, context: Context
    ) -> admin_pb2.DeviceEnrollment:
        if not valid_id(request.device_id):
            await _invalid(context, f"device id {request.device_id[:80]!r} is not valid")
        enrolled = await self._read(context, self._tokens.allow_reenroll, request.device_id)
        if enrolled is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"device {request.device_id!r} has never enrolled: it needs only a token",
            )
            raise AssertionError("abort returns only by raising")
        log.info("re-enrollment allowed device=%s", request.device_id)
        return enrollment_to_pb(enrolled)

    async def DecommissionDevice(
        self, request: admin_pb2.GetDeviceRequest, context: Context
    ) -> admin_pb2.DeviceEnrollment:
        if not valid_id(request.device_id):
            await _invalid(context, f"device id {request.device_id[:80]!r} is not valid")
        revoked = await self._read(
            context, self._tokens.decommission, request.device_id, self._now()
        )
        if revoked is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_id!r}")
            raise AssertionError("abort returns only by raising")
        session = self._sessions.get(request.device_id)
        if session is not None:
            session.close(
                Closing(
                    "decommissioned",
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"device {request.device_id} is decommissioned",
                )
            )
        log.warning("device decommissioned device=%s", request.device_id)
        return enrollment_to_pb(revoked)

    async def FleetStatus(
        self, request: admin_pb2.FleetStatusRequest, context: Context
    ) -> admin_pb2.FleetStatusResponse:
        if request.school_id and not valid_id(request.school_id):
            await _invalid(context, f"school id {request.school_id[:80]!r} is not valid")
        now = self._now()
        counts = await self._read(context, self._store.fleet_counts, now, request.school_id or None)
        return admin_pb2.FleetStatusResponse(
            counts=[count_to_pb(c) for c in counts], computed_at=timestamp(now)
        )
