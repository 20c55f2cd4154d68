"""Users and audit entries between our values and the wire, both directions."""

from __future__ import annotations

from inventory.people import AuditEntry, Outcome, Role, User
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import seconds, timestamp

ROLE_TO_PB = {
    Role.CENTRAL_OPS: admin_pb2.ROLE_CENTRAL_OPS,
    Role.SCHOOL_IT: admin_pb2.ROLE_SCHOOL_IT,
    Role.VIEWER: admin_pb2.ROLE_VIEWER,
}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}


def user_to_pb(u: User) -> admin_pb2.User:
    out = admin_pb2.User(
        name=u.name,
        role=ROLE_TO_PB[u.role],
        school_ids=u.schools,
        created_at=timestamp(u.created_at),
        created_by=u.created_by,
    )
    if u.expires_at is not None:
        out.expires_at.CopyFrom(timestamp(u.expires_at))
    if u.revoked_at is not None:
        out.revoked_at.CopyFrom(timestamp(u.revoked_at))
    return out


def user_from_pb(u: admin_pb2.User) -> User:
    return User(
        name=u.name,
        role=ROLE_FROM_PB[u.role],
        schools=tuple(u.school_ids),
        created_at=seconds(u.created_at),
        created_by=u.created_by,
        expires_at=seconds(u.expires_at) if u.HasField("expires_at") else None,
        revoked_at=seconds(u.revoked_at) if u.HasField("revoked_at") else None,
    )


def audit_to_pb(e: AuditEntry) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
        entry_id=e.entry_id,
        at=timestamp(e.at),
        actor=e.actor,
        action=e.action,
        target=e.target,
        school_id=e.school_id,
        outcome=e.outcome.value,
        message=e.message,
        peer=e.peer,
    )


def audit_from_pb(e: admin_pb2.AuditEntry) -> AuditEntry:
    return AuditEntry(
        entry_id=e.entry_id,
        at=seconds(e.at),
        actor=e.actor,
        action=e.action,
        target=e.target,
        school_id=e.school_id,
        outcome=Outcome(e.outcome),
        message=e.message,
        peer=e.peer,
    )
