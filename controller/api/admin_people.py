"""AdminService's people half: who am I, users (central-ops only), the audit log."""

from __future__ import annotations

from dataclasses import replace

import grpc

from controller.api.guard import Call, Guard, Refused, guarded, invalid, not_found
from controller.people import access
from controller.people.access import Need
from controller.people.store import AccessStore
from inventory.model import valid_id
from inventory.people import AuditQuery, Outcome
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import seconds
from wire.people import ROLE_FROM_PB, audit_to_pb, user_to_pb

AUDIT_DEFAULT = 100
AUDIT_MAX = 10_000


class PeopleAdmin:
    """Who am I, users and the audit log, over the people's store."""

    def __init__(self, guard: Guard, people: AccessStore) -> None:
        self.guard = guard
        self._people = people

    @guarded("whoami", Need.READ)
    async def WhoAmI(self, request: admin_pb2.WhoAmIRequest, call: Call) -> admin_pb2.User:
        assert call.user is not None, "the guard sets the user before the handler runs"
        return user_to_pb(call.user)

    @guarded("users.create", Need.ADMIN, audited=True)
    async def CreateUser(
        self, request: admin_pb2.CreateUserRequest, call: Call
    ) -> admin_pb2.CreateUserResponse:
        call.target = request.name[:80]
        role = ROLE_FROM_PB.get(request.role)
        if role is None:
            raise invalid("a user needs a role: central-ops, school-it or viewer")
        user = access.new_user(
            request.name,
            role,
            list(request.school_ids),
            request.valid_seconds,
            call.who.name,
            self.guard.now(),
        )
        token = access.mint_token()
        added = await self.guard.off_loop(self._people.add_user, user, access.hash_token(token))
        if not added:
            raise Refused(
                grpc.StatusCode.ALREADY_EXISTS,
                f"user {user.name!r} exists; revoke it first to give the name a new token",
                Outcome.FAILED,
            )
        call.done = f"role {role.value}, schools {','.join(user.schools) or 'all'}"
        return admin_pb2.CreateUserResponse(user=user_to_pb(user), token=token)

    @guarded("users.list", Need.ADMIN)
    async def ListUsers(
        self, request: admin_pb2.ListUsersRequest, call: Call
    ) -> admin_pb2.ListUsersResponse:
        users = await self.guard.off_loop(self._people.list_users)
        return admin_pb2.ListUsersResponse(users=[user_to_pb(u) for u in users])

    @guarded("users.revoke", Need.ADMIN, audited=True)
    async def RevokeUser(self, request: admin_pb2.RevokeUserRequest, call: Call) -> admin_pb2.User:
        if not valid_id(request.name):
            raise invalid(f"user name {request.name[:80]!r} is not valid")
        call.target = request.name
        user = await self.guard.off_loop(self._people.revoke_user, request.name, self.guard.now())
        if user is None:
            raise not_found(f"no user {request.name!r}")
        call.done = "token revoked"
        return user_to_pb(user)

    @guarded("audit.list", Need.READ)
    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, call: Call
    ) -> admin_pb2.ListAuditResponse:
        if request.school_id and not valid_id(request.school_id):
            raise invalid(f"school id {request.school_id[:80]!r} is not valid")
        call.allow(Need.READ, request.school_id or None)
        if request.outcome and request.outcome not in {o.value for o in Outcome}:
            raise invalid(f"outcome {request.outcome[:40]!r} is not ok, denied or failed")
        query = AuditQuery(
            actor=request.actor or None,
            action=request.action or None,
            target=request.target or None,
            school_id=request.school_id or None,
            outcome=Outcome(request.outcome) if request.outcome else None,
            since=seconds(request.since) if request.HasField("since") else None,
            visible_schools=call.who.scope,
            reader=call.who.name,
            limit=min(request.limit or AUDIT_DEFAULT, AUDIT_MAX),
        )
        entries = await self.guard.off_loop(self._people.list_audit, query)
        scope = call.who.scope
        if scope is not None:
            # A scoped reader also sees their own attempts elsewhere, but not which
            # school a target they could not see is in.
            entries = [e if e.school_id in scope else replace(e, school_id="") for e in entries]
        return admin_pb2.ListAuditResponse(entries=[audit_to_pb(e) for e in entries])
