"""People's tokens and the audit log, on either database."""

from __future__ import annotations

from controller.people.audit_read import audit_select
from controller.people.stored_values import (
    checked_user,
    storable_name,
    stored_entry,
)
from controller.store.sql import Row, SqlDatabase
from inventory.people import AuditEntry, AuditQuery, Outcome, Role, User

_USER_COLUMNS = "name, role, schools, created_at, created_by, expires_at, revoked_at"
_AUDIT_COLUMNS = "entry_id, at, actor, action, target, school_id, outcome, message, peer"


def _user(r: Row) -> User:
    return User(
        name=r["name"],
        role=Role(r["role"]),
        schools=tuple(s for s in r["schools"].split(",") if s),
        created_at=r["created_at"],
        created_by=r["created_by"],
        expires_at=r["expires_at"],
        revoked_at=r["revoked_at"],
    )


def _entry(r: Row) -> AuditEntry:
    return AuditEntry(
        entry_id=r["entry_id"],
        at=r["at"],
        actor=r["actor"],
        action=r["action"],
        target=r["target"],
        school_id=r["school_id"],
        outcome=Outcome(r["outcome"]),
        message=r["message"],
        peer=r["peer"],
    )


class SqlPeople:
    """An AccessStore: users kept with a hash of their token, and the audit log. Safe
    for several controllers on one database: each change is one transaction, and a
    name's uniqueness is the primary key's."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def add_user(self, user: User, token_hash: bytes) -> bool:
        checked_user(user)
        with self._db.transaction() as tx:
            # A revoked user's name may be given again; an active one may not.
            tx.execute(
                "DELETE FROM users WHERE name = ? AND (revoked_at IS NOT NULL "
                "OR (expires_at IS NOT NULL AND expires_at <= ?))",
                (user.name, user.created_at),
            )
            # Two controllers adding one name at once: the second does nothing.
            added = tx.execute(
                f"INSERT INTO users ({_USER_COLUMNS}, token_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (name) DO NOTHING",
                (
                    user.name,
                    user.role.value,
                    ",".join(user.schools),
                    user.created_at,
                    user.created_by,
                    user.expires_at,
                    token_hash,
                ),
            ).rowcount
        return bool(added)

    def find_user(self, token_hash: bytes) -> User | None:
        rows = self._db.read(
            f"SELECT {_USER_COLUMNS} FROM users WHERE token_hash = ?", (token_hash,)
        )
        return _user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        order = self._db.dialect.by_code_point("name")
        rows = self._db.read(f"SELECT {_USER_COLUMNS} FROM users ORDER BY {order}")
        return [_user(r) for r in rows]

    def revoke_user(self, name: str, now: float) -> User | None:
        if not storable_name(name):
            return None
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE users SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now, name),
            )
            row = tx.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)
            ).fetchone()
        return _user(row) if row is not None else None

    def append_audit(self, entry: AuditEntry) -> None:
        e = stored_entry(entry)
        self._db.write(
            "INSERT INTO audit (at, actor, action, target, school_id, outcome, message, peer) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e.at, e.actor, e.action, e.target, e.school_id, e.outcome.value, e.message, e.peer),
        )

    def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        sql, params = audit_select(query, _AUDIT_COLUMNS, self._db.dialect)
        return [_entry(r) for r in self._db.read(sql, params)]
