"""What people's access needs from a store: users (a hash of each bearer token) and
the audit log."""

from __future__ import annotations

from typing import Protocol

from inventory.people import AuditEntry, AuditQuery, User


class AccessStore(Protocol):
    """People's access (a hash of each bearer token) and the audit log."""

    def add_user(self, user: User, token_hash: bytes) -> bool:
        """Stores a new user; False if an active user already has the name (a revoked
        or expired one is replaced)."""

    def find_user(self, token_hash: bytes) -> User | None:
        """The user whose token has this hash, active or not."""

    def list_users(self) -> list[User]:
        """Every user, revoked ones too, by name."""

    def revoke_user(self, name: str, now: float) -> User | None:
        """Revokes the user's token (again is a no-op); None if there is no such user."""

    def append_audit(self, entry: AuditEntry) -> None:
        """Appends an entry (its entry_id is assigned by the store)."""

    def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries matching ``query``, newest first."""
