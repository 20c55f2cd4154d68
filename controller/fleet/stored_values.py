"""What the devices' store keeps of a device's values, the same on SQLite and PostgreSQL.

PostgreSQL's text cannot hold a NUL character, and its btree indexes hold at most
2704 bytes a row; SQLite has neither limit. The ingest edge refuses NULs and long
values in ids and labels already; the store is the last line, and one device's value
must never fail a batch of other devices' data on PostgreSQL. So both stores keep
free text a device sends (its hostname and OS, a label, a reason, a command's answer)
with each NUL written as the four characters ``\\x00``, and hold that an id (device,
school, room) or a BSSID is either kept exactly or not at all: a device that names
one is refused on connecting, and a batch's row or a lookup that names one finds no
device, since none can exist.
"""

from __future__ import annotations

from dataclasses import replace

from controller.errors import StoreError
from inventory.model import DeviceIdentity, OsInfo

# Characters an indexed value may have: four bytes each at most in UTF-8, well within
# an index row. The edge allows 64 in an id.
KEY_CHARS = 200


def stored_text(value: str) -> str:
    """``value`` as the store keeps it: NULs written out."""
    return value.replace("\x00", "\\x00")


def _optional(value: str | None) -> str | None:
    return None if value is None else stored_text(value)


def storable_key(value: str) -> bool:
    """Whether an id or BSSID can be kept exactly (a lookup of any other finds
    nothing, without asking the database)."""
    return "\x00" not in value and len(value) <= KEY_CHARS


def stored_identity(identity: DeviceIdentity) -> DeviceIdentity:
    """``identity`` as both stores keep it; StoreError for an id neither could."""
    for field, value in (
        ("device id", identity.device_id),
        ("school id", identity.school_id),
        ("room id", identity.room_id),
    ):
        if not storable_key(value):
            raise StoreError(
                f"device {stored_text(identity.device_id)[:80]!r}: {field} "
                f"{stored_text(value)[:80]!r} has a NUL or is over {KEY_CHARS} characters"
            )
    os = identity.os
    if os is not None:
        os = OsInfo(_optional(os.name), _optional(os.version), stored_text(os.kernel), os.boot_time)
    return replace(
        identity,
        hostname=stored_text(identity.hostname),
        agent_version=stored_text(identity.agent_version),
        os=os,
        address=stored_text(identity.address),
        labels=tuple((stored_text(k), stored_text(v)) for k, v in identity.labels),
    )


def page_after(after_id: str) -> str:
    """A page token as the id it continues from. For ids without a NUL, being greater
    than ``p + NUL + rest`` is being greater than ``p``: cut at the first NUL, the
    order is the same and the database never sees one."""
    return after_id.split("\x00", 1)[0]
