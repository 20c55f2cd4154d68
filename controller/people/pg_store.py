"""People's tokens and the audit log in the PostgreSQL store."""

from __future__ import annotations

from psycopg.rows import DictRow

from controller.people.audit_read import Dialect, audit_select
from controller.people.stored_values import (
    checked_user,
    storable_name,
    stored_entry,
)
from controller.store.pg_database import PgDatabase
from inventory.people import AuditEntry, AuditQuery, Outcome, Role, User

_USER_COLUMNS = "name, role, schools, created_at, created_by, expires_at, revoked_at"
_AUDIT_COLUMNS = "entry_id, at, actor, action, target, school_id, outcome, message, peer"


def _user(r: DictRow) -> User:
    return User(
        name=r["name"],
        role=Role(r["role"]),
        schools=tuple(s for s in r["schools"].split(",") if s),
        created_at=r["created_at"],
        created_by=r["created_by"],
        expires_at=r["expires_at"],
        revoked_at=r["revoked_at"],
    )


def _entry(r: DictRow) -> AuditEntry:
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


# A list bound as an array.
_POSTGRES = Dialect(
    mark=lambda name: f"%({name})s",
    one_of=lambda column, mark: f"{column} = ANY({mark})",
    listed=list,
)


class PgPeople:
    """An AccessStore on PostgreSQL: users kept with a hash of their token, and the
    audit log. Safe for several controllers on one database: each change is one
    transaction, and a name's uniqueness is the primary key's."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    def add_user(self, user: User, token_hash: bytes) -> bool:
        checked_user(user)
        with self._db.transaction() as conn:
            # A revoked user's name may be given again; an active one may not.
            conn.execute(
                "DELETE FROM users WHERE name = %s AND (revoked_at IS NOT NULL "
                "OR (expires_at IS NOT NULL AND expires_at <= %s))",
                (user.name, user.created_at),
            )
            # Two controllers adding one name at once: the second does nothing.
            added = conn.execute(
                f"INSERT INTO users ({_USER_COLUMNS}, token_hash) "
                "VALUES (%s, %s, %s, %s, %s, %s, NULL, %s) ON CONFLICT (name) DO NOTHING",
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
            f"SELECT {_USER_COLUMNS} FROM users WHERE token_hash = %s", (token_hash,)
        )
        return _user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        # COLLATE "C": SQLite's order (by code point), whatever the database's locale.
        rows = self._db.read(f'SELECT {_USER_COLUMNS} FROM users ORDER BY name COLLATE "C"')
        return [_user(r) for r in rows]

    def revoke_user(self, name: str, now: float) -> User | None:
        if not storable_name(name):
            return None
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE users SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL",
                (now, name),
            )
            row = conn.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE name = %s", (name,)
            ).fetchone()
        return _user(row) if row is not None else None

    def append_audit(self, entry: AuditEntry) -> None:
        e = stored_entry(entry)
        self._db.write(
            "INSERT INTO audit (at, actor, action, target, school_id, outcome, message, peer) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (e.at, e.actor, e.action, e.target, e.school_id, e.outcome.value, e.message, e.peer),
        )

    def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        sql, params = audit_select(query, _AUDIT_COLUMNS, _POSTGRES)
        return [_entry(r) for r in self._db.read(sql, params)]
