"""What people's stores keep of a value, the same on SQLite and PostgreSQL.

PostgreSQL's text cannot hold a NUL character, and its btree indexes hold at most
2704 bytes a row; SQLite has neither limit. So that both stores answer alike, both
shape values here first: an audit entry is always kept (an attempt must not escape
the log by carrying a NUL or a long id), its NULs written as the four characters
``\\x00`` and its indexed fields cut; a user with such values is refused, since a
name or school that is not kept exactly is not the same user.
"""

from __future__ import annotations

from dataclasses import replace

from controller.errors import StoreError
from inventory.people import AuditEntry, AuditQuery, User

# Characters kept of the audit's indexed fields (actor, school): four bytes each at
# most in UTF-8, well within an index row. The admin guard cuts targets and schools
# to 200 already.
INDEXED_CHARS = 200


def audit_text(value: str) -> str:
    """``value`` as the audit keeps it: NULs written out."""
    return value.replace("\x00", "\\x00")


def _indexed(value: str) -> str:
    return audit_text(value)[:INDEXED_CHARS]


def stored_entry(entry: AuditEntry) -> AuditEntry:
    """``entry`` as both stores keep it."""
    return replace(
        entry,
        actor=_indexed(entry.actor),
        action=audit_text(entry.action),
        target=audit_text(entry.target),
        school_id=_indexed(entry.school_id),
        message=audit_text(entry.message),
        peer=audit_text(entry.peer),
    )


def stored_query(query: AuditQuery) -> AuditQuery:
    """``query`` with its values shaped as the entries were, so that they match."""
    return replace(
        query,
        actor=None if query.actor is None else _indexed(query.actor),
        action=None if query.action is None else audit_text(query.action),
        target=None if query.target is None else audit_text(query.target),
        school_id=None if query.school_id is None else _indexed(query.school_id),
        visible_schools=(
            None
            if query.visible_schools is None
            else frozenset(_indexed(s) for s in query.visible_schools)
        ),
        reader=_indexed(query.reader),
        # SQLite reads LIMIT -1 as no limit, PostgreSQL refuses it: none on both.
        limit=max(query.limit, 0),
    )


def checked_user(user: User) -> User:
    """``user`` if both stores can keep it exactly; StoreError otherwise."""
    texts = (user.name, user.created_by, *user.schools)
    if any("\x00" in t for t in texts):
        raise StoreError(f"user {audit_text(user.name)[:80]!r}: a NUL character cannot be stored")
    if len(user.name) > INDEXED_CHARS:
        raise StoreError(f"user {user.name[:80]!r}...: a name over {INDEXED_CHARS} characters")
    return user


def storable_name(name: str) -> bool:
    """Whether a user could have been stored under ``name`` (a lookup of any other
    finds no one, without asking the database)."""
    return "\x00" not in name and len(name) <= INDEXED_CHARS
