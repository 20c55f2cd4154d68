"""People's tokens and the audit log in the SQLite store."""

from __future__ import annotations

import json
import sqlite3

from controller.errors import StoreError
from controller.people.audit_read import Dialect, audit_select
from controller.people.stored_values import (
    checked_user,
    storable_name,
    stored_entry,
)
from controller.store.database import Database
from inventory.people import AuditEntry, AuditQuery, Outcome, Role, User


def _user(r: sqlite3.Row) -> User:
    return User(
        name=r["name"],
        role=Role(r["role"]),
        schools=tuple(s for s in r["schools"].split(",") if s),
        created_at=r["created_at"],
        created_by=r["created_by"],
        expires_at=r["expires_at"],
        revoked_at=r["revoked_at"],
    )


def _entry(r: sqlite3.Row) -> AuditEntry:
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


# Membership in a list bound as one JSON text.
_SQLITE = Dialect(
    mark=lambda name: f":{name}",
    one_of=lambda column, mark: f"{column} IN (SELECT value FROM json_each({mark}))",
    listed=json.dumps,
)


class SqlitePeople:
    """An AccessStore: users kept with a hash of their token, and the audit log."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_user(self, user: User, token_hash: bytes) -> bool:
        checked_user(user)
        with self._db.write_lock:
            try:
                self._db.writer.execute("BEGIN IMMEDIATE")
                # A revoked user's name may be given again; an active one may not.
                self._db.writer.execute(
                    "DELETE FROM users WHERE name = ? AND (revoked_at IS NOT NULL "
                    "OR (expires_at IS NOT NULL AND expires_at <= ?))",
                    (user.name, user.created_at),
                )
                added = self._db.writer.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, NULL) "
                    "ON CONFLICT (name) DO NOTHING",
                    (
                        user.name,
                        user.role.value,
                        ",".join(user.schools),
                        token_hash,
                        user.created_at,
                        user.created_by,
                        user.expires_at,
                    ),
                ).rowcount
                self._db.writer.execute("COMMIT")
                return bool(added)
            except sqlite3.Error as exc:
                if self._db.writer.in_transaction:
                    self._db.writer.execute("ROLLBACK")
                raise StoreError(f"database {self._db.path}: {exc}") from None

    def find_user(self, token_hash: bytes) -> User | None:
        rows = self._db.read("SELECT * FROM users WHERE token_hash = :h", {"h": token_hash})
        return _user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        return [_user(r) for r in self._db.read("SELECT * FROM users ORDER BY name", {})]

    def revoke_user(self, name: str, now: float) -> User | None:
        if not storable_name(name):
            return None
        self._db.write(
            "UPDATE users SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name)
        )
        rows = self._db.read("SELECT * FROM users WHERE name = :name", {"name": name})
        return _user(rows[0]) if rows else None

    def append_audit(self, entry: AuditEntry) -> None:
        e = stored_entry(entry)
        self._db.write(
            "INSERT INTO audit (at, actor, action, target, school_id, outcome, message, peer) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e.at, e.actor, e.action, e.target, e.school_id, e.outcome.value, e.message, e.peer),
        )

    def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        sql, params = audit_select(query, "*", _SQLITE)
        return [_entry(r) for r in self._db.read(sql, params)]
