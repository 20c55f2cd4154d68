"""Users, their roles and the audit log: the AdminService calls behind `schoolctl
whoami/login/users/audit`, answered as our own values."""

from __future__ import annotations

from cli.client.connection import Connection
from inventory.people import AuditEntry, AuditQuery, Role, User
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import timestamp
from wire.people import ROLE_TO_PB, audit_from_pb, user_from_pb


class PeopleClient:
    """Users and the audit log."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def whoami(self) -> User:
        """The user the token belongs to."""
        return user_from_pb(self._conn.call(self._conn.stub.WhoAmI, admin_pb2.WhoAmIRequest()))

    def create_user(
        self, name: str, role: Role, schools: list[str], valid_seconds: int
    ) -> tuple[User, str]:
        """A new user and their token (shown once)."""
        request = admin_pb2.CreateUserRequest(
            name=name, role=ROLE_TO_PB[role], school_ids=schools, valid_seconds=valid_seconds
        )
        response = self._conn.call(self._conn.stub.CreateUser, request)
        return user_from_pb(response.user), response.token

    def users(self) -> list[User]:
        """Every user, revoked ones too."""
        response = self._conn.call(self._conn.stub.ListUsers, admin_pb2.ListUsersRequest())
        return [user_from_pb(u) for u in response.users]

    def revoke_user(self, name: str) -> User:
        """Revokes the user's token."""
        return user_from_pb(
            self._conn.call(self._conn.stub.RevokeUser, admin_pb2.RevokeUserRequest(name=name))
        )

    def audit(self, query: AuditQuery) -> list[AuditEntry]:
        """Audit entries matching the query's filters, newest first (the caller's scope
        is the controller's to apply). ValueError if ``since`` is out of a Timestamp's
        range (years 1 to 9999)."""
        request = admin_pb2.ListAuditRequest(
            actor=query.actor or "",
            action=query.action or "",
            target=query.target or "",
            school_id=query.school_id or "",
            outcome=query.outcome.value if query.outcome else "",
            limit=query.limit,
        )
        if query.since is not None:
            request.since.CopyFrom(timestamp(query.since))
        response = self._conn.call(self._conn.stub.ListAudit, request)
        return [audit_from_pb(e) for e in response.entries]
