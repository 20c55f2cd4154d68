"""AdminService's uplink checks: check a school by hand, list the latest checks, and
the schools under the target for `schoolctl status`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from controller.api.guard import Call, Guard, Refused, guarded, invalid
from controller.errors import StoreError, UplinkElsewhere, UplinkUnavailable
from controller.people.access import Need
from controller.uplink import across
from controller.uplink.checks import UplinkChecks
from controller.uplink.store import UplinkStore
from inventory.model import valid_id
from inventory.people import Outcome
from inventory.uplink import UplinkCheck, UplinkState
from protos.schoolfleet.v1 import admin_pb2
from wire.uplink import check_to_pb

# Asks the other controllers sharing the store: (kind, argument, seconds) -> the answer
# of the one that did it, or None (controller/relay/asking.py).
Ask = Callable[[str, str, float], Awaitable[str | None]]
# Beyond a check's own deadline, for the answer's way back.
_ANSWER_SLACK = 5.0


class UplinkAdmin:
    """A school's uplink checked by hand, the latest checks, the schools under target."""

    def __init__(
        self,
        guard: Guard,
        store: UplinkStore,
        checks: UplinkChecks | None,
        target_mbps: float,
        ask: Ask | None = None,
    ) -> None:
        self.guard = guard
        self._store = store
        self._checks = checks
        self._target_mbps = target_mbps
        # Other controllers sharing the store, for a school whose devices are on them.
        self._ask = ask

    @guarded("uplink.check", Need.CHANGE, audited=True)
    async def CheckUplink(
        self, request: admin_pb2.CheckUplinkRequest, call: Call
    ) -> admin_pb2.UplinkCheck:
        if not valid_id(request.school_id):
            raise invalid(f"school id {request.school_id[:80]!r} is not valid")
        call.target = request.school_id
        call.allow(Need.CHANGE, request.school_id)
        if self._checks is None:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, "this controller runs no uplink checks", Outcome.FAILED
            )
        try:
            try:
                check = await self._checks.check(request.school_id)
            except UplinkElsewhere as exc:
                check = await self._elsewhere(request.school_id, self._checks.deadline, exc)
        except UplinkUnavailable as exc:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(exc), Outcome.FAILED) from None
        except StoreError as exc:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, f"controller store unavailable: {exc}", Outcome.FAILED
            ) from None
        if check.state is UplinkState.OK:
            call.done = f"{check.mbps or 0:.1f} Mbit/s measured by {check.device_id}"
        else:
            call.done = f"failed on {check.device_id}: {check.error}"
        return check_to_pb(check)

    async def _elsewhere(
        self, school_id: str, deadline: float, here: UplinkElsewhere
    ) -> UplinkCheck:
        if self._ask is None:
            raise here
        answer = await self._ask(across.KIND, school_id, deadline + _ANSWER_SLACK)
        if answer is None:
            raise here
        return across.read_answer(answer)

    @guarded("uplink.list", Need.READ)
    async def ListUplinks(
        self, request: admin_pb2.ListUplinksRequest, call: Call
    ) -> admin_pb2.ListUplinksResponse:
        if request.school_id and not valid_id(request.school_id):
            raise invalid(f"school id {request.school_id[:80]!r} is not valid")
        call.target = request.school_id
        call.allow(Need.READ, request.school_id or None)
        school, scope = request.school_id or None, call.who.scope
        latest = await self.guard.off_loop(self._store.latest_uplink_checks, school, scope)
        measured: dict[str, UplinkCheck] = {
            c.school_id: c
            for c in await self.guard.off_loop(
                lambda: self._store.latest_uplink_checks(school, scope, measured=True)
            )
        }
        schools = []
        for check in latest:
            entry = admin_pb2.SchoolUplink(school_id=check.school_id, latest=check_to_pb(check))
            if check.school_id in measured:
                entry.measured.CopyFrom(check_to_pb(measured[check.school_id]))
            schools.append(entry)
        return admin_pb2.ListUplinksResponse(schools=schools)

    async def slow_uplinks(self, school_id: str | None, call: Call) -> list[admin_pb2.UplinkCheck]:
        """The latest measurement of each school under the target, within the caller's scope."""
        measured = await self.guard.off_loop(
            lambda: self._store.latest_uplink_checks(school_id, call.who.scope, measured=True)
        )
        return [
            check_to_pb(c) for c in measured if c.mbps is not None and c.mbps < self._target_mbps
        ]
