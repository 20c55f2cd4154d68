"""People who use schoolctl, what they may do, and the record of what they did."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    """What a person may do; school-scoped roles see and change only their schools."""

    # Everything, in every school, including users and the audit log.
    CENTRAL_OPS = "central-ops"
    # Read and change their schools' devices, tokens, lessons and rollouts.
    SCHOOL_IT = "school-it"
    # Read only: every school, or only the schools given.
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class User:
    """A person's access: one bearer token, of which only a hash is kept."""

    name: str
    role: Role
    # Empty: every school (central-ops, or a city-wide viewer).
    schools: tuple[str, ...]
    created_at: float
    created_by: str
    expires_at: float | None = None
    revoked_at: float | None = None

    def active(self, now: float) -> bool:
        """Whether the user's token is accepted at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class Outcome(enum.StrEnum):
    """How an audited call ended."""

    OK = "ok"
    # No token, an unknown one, or a role or school that does not allow it.
    DENIED = "denied"
    # Allowed, but refused: bad arguments, nothing found, the store unavailable.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change made, or one attempt refused, through the admin API."""

    entry_id: int
    at: float
    # A user's name; "-" when no token or an unknown one was presented.
    actor: str
    # What was asked, e.g. "devices.decommission".
    action: str
    # What it was asked of: a device, token or user name; "" for none.
    target: str
    # The school the target belongs to; "" when none (users, fleet-wide).
    school_id: str
    outcome: Outcome
    # Why it was denied or failed, or what was done.
    message: str
    # Where the call came from, as gRPC names the peer.
    peer: str


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for reading the audit log; None matches everything."""

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    school_id: str | None = None
    outcome: Outcome | None = None
    since: float | None = None
    # Scope of the reader: entries of these schools or by this actor (None: all).
    visible_schools: frozenset[str] | None = None
    reader: str = ""
    limit: int = 100
