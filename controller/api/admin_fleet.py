"""AdminService's devices: list, show and ping them, and the fleet's status."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import grpc

from controller.api.convert import count_to_pb, device_to_pb
from controller.api.device_access import DeviceAccess, check_id, check_school_filter
from controller.api.guard import Call, Guard, Refused, guarded, invalid
from controller.fleet.sessions import SessionRegistry
from controller.fleet.store import DeviceQuery, DeviceStore
from controller.people.access import Need
from inventory.people import Outcome
from protos.schoolfleet.v1 import admin_pb2, agent_pb2, fleet_pb2
from wire.mapping import CONDITION_FROM_PB, KIND_FROM_PB, STATUS_FROM_PB, timestamp

PAGE_DEFAULT = 500
PAGE_MAX = 1000
SlowUplinks = Callable[[str | None, Call], Awaitable[list[admin_pb2.UplinkCheck]]]


class FleetAdmin:
    """The registry's devices as the caller may see them; a ping over a device's stream."""

    def __init__(
        self,
        guard: Guard,
        devices: DeviceStore,
        device_access: DeviceAccess,
        sessions: SessionRegistry[agent_pb2.ControllerMessage],
        send_command: Callable[[str, bytes], None],
        slow_uplinks: SlowUplinks,
        uplink_target_mbps: float,
    ) -> None:
        self.guard = guard
        self._devices = devices
        self._access = device_access
        self._sessions = sessions
        # On the device's stream, here or on the controller sharing the store that
        # holds it (controller/relay/device_commands.py).
        self._send_command = send_command
        self._slow_uplinks = slow_uplinks
        self._uplink_target_mbps = uplink_target_mbps

    @guarded("devices.list", Need.READ)
    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, call: Call
    ) -> admin_pb2.ListDevicesResponse:
        check_school_filter(request.school_id)
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
        devices = await self.guard.off_loop(self._devices.list_devices, query, self.guard.now())
        return admin_pb2.ListDevicesResponse(
            devices=[device_to_pb(d) for d in devices],
            next_page_token=devices[-1].identity.device_id if len(devices) == limit else "",
        )

    @guarded("devices.show", Need.READ)
    async def GetDevice(self, request: admin_pb2.GetDeviceRequest, call: Call) -> admin_pb2.Device:
        check_id(request.device_id, "device id")
        call.target = request.device_id
        device = await self.guard.off_loop(
            self._devices.get_device, request.device_id, self.guard.now()
        )
        schools = None if device is None else [device.identity.school_id]
        call.allow_target(Need.READ, schools, f"device {request.device_id!r}")
        assert device is not None
        return device_to_pb(device)

    @guarded("devices.ping", Need.CHANGE, audited=True)
    async def PingDevice(
        self, request: admin_pb2.PingDeviceRequest, call: Call
    ) -> admin_pb2.PingDeviceResponse:
        await self._access.allow(call, Need.CHANGE, request.device_id)
        now = self.guard.now()
        if self._sessions.get(request.device_id) is None:
            # Its stream may be on another controller sharing the store.
            device = await self.guard.off_loop(self._devices.get_device, request.device_id, now)
            if device is None or not device.stream_up:
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"device {request.device_id!r} is not connected; a ping needs its stream up",
                    Outcome.FAILED,
                )
        issued_at = timestamp(now)
        command_id = f"ping-{uuid.uuid4().hex[:16]}"
        command = agent_pb2.Command(
            command_id=command_id, issued_at=issued_at, ping=agent_pb2.Ping()
        )
        self._send_command(request.device_id, command.SerializeToString())
        call.done = f"ping {command_id} sent"
        return admin_pb2.PingDeviceResponse(command_id=command_id, issued_at=issued_at)

    @guarded("status", Need.READ)
    async def FleetStatus(
        self, request: admin_pb2.FleetStatusRequest, call: Call
    ) -> admin_pb2.FleetStatusResponse:
        check_school_filter(request.school_id)
        call.target = request.school_id
        call.allow(Need.READ, request.school_id or None)
        now = self.guard.now()
        counts = await self.guard.off_loop(
            self._devices.fleet_counts, now, request.school_id or None
        )
        scope = call.who.scope
        return admin_pb2.FleetStatusResponse(
            counts=[count_to_pb(c) for c in counts if scope is None or c.school_id in scope],
            computed_at=timestamp(now),
            uplink_target_mbps=self._uplink_target_mbps,
            slow_uplinks=await self._slow_uplinks(request.school_id or None, call),
        )
