"""What the rollouts' store keeps of a value, the same on SQLite and PostgreSQL.

PostgreSQL's text cannot hold a NUL character, and its index rows hold at most 2704
bytes; SQLite has neither limit. So that both stores answer alike, values are shaped
here first. Ids (device, school, room) and windows are keys: one with a NUL or over
``ID_CHARS`` is refused when stored, and is in nothing when looked up. A rollout's
spec and who asked must read back exactly: a NUL there is refused. A reason or a wait
is the engine's text and is always kept, its NULs written out. A host's output is
escaped already (inventory/host_output.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.errors import StoreError
from controller.rollouts.store import NewHost
from inventory.rollouts import RolloutSpec

# The longest id or window kept: 4 bytes a character at most in UTF-8, so that two of
# them stay within a PostgreSQL index row. The API's ids are 64 at most.
ID_CHARS = 200


def storable(value: str) -> bool:
    """Whether an id or a window can be stored as it is; one that cannot is in no
    rollout and no school's windows."""
    return "\x00" not in value and len(value) <= ID_CHARS


def checked_id(what: str, value: str) -> str:
    """``value`` if it is storable; StoreError naming ``what`` otherwise."""
    if not storable(value):
        why = "a NUL character" if "\x00" in value else f"over {ID_CHARS} characters"
        raise StoreError(f"{what} {value[:80]!r}: {why} cannot be stored")
    return value


def check_spec(spec: RolloutSpec, created_by: str) -> None:
    """StoreError if the rollout's own texts hold a NUL. Its extra vars are JSON, where
    a NUL is the escape \\u0000, which either database's text holds."""
    for what, text in (
        ("rollout playbook", spec.playbook),
        ("rollout selector", spec.selector),
        ("rollout creator", created_by),
    ):
        if "\x00" in text:
            raise StoreError(f"{what} {text[:80]!r}: a NUL character cannot be stored")


def written_out(text: str) -> str:
    """A reason or a wait as kept: its NULs written as the four characters ``\\x00``."""
    return text.replace("\x00", "\\x00")


def host_schools(hosts: Sequence[NewHost]) -> dict[str, str]:
    """Each host's school by device id; StoreError for a host given twice or an id
    that cannot be stored."""
    schools: dict[str, str] = {}
    for h in hosts:
        if h.device_id in schools:
            raise StoreError(f"rollout host {h.device_id!r} is given twice")
        schools[checked_id("device id", h.device_id)] = checked_id("school id", h.school_id)
    return schools
