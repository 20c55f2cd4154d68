"""Which texts the enrollment store keeps, the same on SQLite and PostgreSQL.

PostgreSQL's text cannot hold a NUL character, and its btree indexes hold at most
2704 bytes a row; SQLite has neither limit. An id or serial that is not kept exactly
names another device or certificate, so none is shortened or escaped: a write of one
is refused (StoreError) before the database sees it, and a lookup of one finds
nothing without asking, as no such value can have been stored. Real ids are
inventory.model.valid_id's (64 characters at most), checked where they come in.
"""

from __future__ import annotations

from controller.errors import StoreError

# Characters of an indexed id (device, school, token): four bytes each at most in
# UTF-8, well within an index row.
ID_CHARS = 200


def storable_id(value: str) -> bool:
    """Whether an id could have been stored as ``value``."""
    return "\x00" not in value and len(value) <= ID_CHARS


def storable_text(value: str) -> bool:
    """Whether an unindexed text (a serial, a CA's id) could have been stored."""
    return "\x00" not in value


def check_id(what: str, value: str) -> None:
    """StoreError unless ``value`` can be stored as an id."""
    if "\x00" in value:
        raise StoreError(f"{what} {value[:80]!r}: a NUL character cannot be stored")
    if len(value) > ID_CHARS:
        raise StoreError(f"{what} {value[:80]!r}...: an id over {ID_CHARS} characters")


def check_text(what: str, value: str) -> None:
    """StoreError unless ``value`` can be stored as an unindexed text."""
    if not storable_text(value):
        raise StoreError(f"{what} {value[:80]!r}: a NUL character cannot be stored")
