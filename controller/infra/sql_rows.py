"""Rows of the infrastructure tables to our values and back, for ``SqlInfra``: the
inventory's upserts, a target's probe and host keys read from the columns
``SqlInfra`` joins, and what either database can keep of a value.

PostgreSQL's text cannot hold a NUL character and its index rows hold at most 2704
bytes; SQLite has neither limit. So that both answer alike: an inventory row that
could not be kept exactly (a NUL anywhere, an id over ``ID_CHARS``) is refused
before anything is written, an id no row could have is looked up without asking the
database, and what a probed target says (a reason, a host key) is kept with its
NULs written out as ``\\x00``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import fields

from controller.errors import StoreError
from controller.store.sql import Row, Tx
from inventory.infra import (
    AccessPoint,
    HostKey,
    ProbeResult,
    ProbeTarget,
    Room,
    School,
    Server,
    TargetKind,
)

# Characters of an indexed id (school, room, access point, server, BSSID, target):
# four bytes each at most in UTF-8, so that two in one key stay within an index row.
# The import's rules allow 64.
ID_CHARS = 200
_AP_COLUMNS = (
    "ap_id, school_id, room_id, location, model, mac, address, ssh_user, ssh_port, updated_at"
)
_SERVER_COLUMNS = "server_id, school_id, address, ssh_user, ssh_port, updated_at"
_AP_UPSERT = f"""
    INSERT INTO access_points ({_AP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (ap_id) DO UPDATE SET school_id = excluded.school_id,
        room_id = excluded.room_id, location = excluded.location, model = excluded.model,
        mac = excluded.mac, address = excluded.address, ssh_user = excluded.ssh_user,
        ssh_port = excluded.ssh_port, updated_at = excluded.updated_at
"""
_SERVER_UPSERT = f"""
    INSERT INTO servers ({_SERVER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (server_id) DO UPDATE SET school_id = excluded.school_id,
        address = excluded.address, ssh_user = excluded.ssh_user,
        ssh_port = excluded.ssh_port, updated_at = excluded.updated_at
"""
# Each kind of inventory row: what messages call it, its own id, and the fields the
# tables index.
_IDS: dict[type, tuple[str, str, tuple[str, ...]]] = {
    School: ("school", "school_id", ("school_id",)),
    Room: ("room", "room_id", ("school_id", "room_id")),
    AccessPoint: ("access point", "ap_id", ("ap_id", "school_id", "bssids")),
    Server: ("server", "server_id", ("server_id", "school_id")),
}


def keyable(value: str) -> bool:
    """Whether a stored id could be ``value`` (else a lookup finds nothing)."""
    return "\x00" not in value and len(value) <= ID_CHARS


def keyable_ids(values: Iterable[str]) -> list[str]:
    """``values`` that a stored id could be, sorted and once each."""
    return sorted({v for v in values if keyable(v)})


def kept(text: str) -> str:
    """What a probed target said, as both databases keep it: NULs written out."""
    return text.replace("\x00", "\\x00")


def kept_key(key: HostKey | None) -> HostKey | None:
    """A host key as kept; one with a NUL is kept written out, so it never matches
    the key itself again (a probe then fails closed, on both databases)."""
    return None if key is None else HostKey(kept(key.key_type), kept(key.key_data))


def check_rows(items: Iterable[School | Room | AccessPoint | Server]) -> None:
    """StoreError naming the first row and field that no database could keep exactly."""
    for item in items:
        word, own, indexed = _IDS[type(item)]
        where = f"{word} {kept(getattr(item, own))[:80]!r}"
        for f in fields(item):
            value = getattr(item, f.name)
            for text in value if isinstance(value, tuple) else (value,):
                if not isinstance(text, str):
                    continue
                if "\x00" in text:
                    raise StoreError(f"{where}: a NUL character in {f.name} cannot be stored")
                if f.name in indexed and len(text) > ID_CHARS:
                    raise StoreError(f"{where}: {f.name} is over {ID_CHARS} characters")


def host_key_of(key_type: str | None, key_data: str | None) -> HostKey | None:
    return HostKey(key_type, key_data) if key_type and key_data else None


def probe_of(kind: TargetKind, target_id: str, r: Row) -> ProbeResult | None:
    if r["up"] is None:
        return None
    return ProbeResult(
        kind=kind,
        target_id=target_id,
        up=bool(r["up"]),
        reason=r["reason"],
        duration=r["duration"],
        probed_at=r["probed_at"],
        facts=json.loads(r["facts"]),
        seen_key=host_key_of(r["seen_type"], r["seen_data"]),
    )


def target_of(kind: TargetKind, target_id: str, r: Row) -> ProbeTarget:
    return ProbeTarget(
        kind=kind,
        target_id=target_id,
        school_id=r["school_id"],
        address=r["address"],
        ssh_user=r["ssh_user"],
        ssh_port=r["ssh_port"],
        pinned_key=host_key_of(r["pinned_type"], r["pinned_data"]),
    )


def access_point_of(r: Row, bssids: Sequence[str]) -> AccessPoint:
    return AccessPoint(
        ap_id=r["ap_id"],
        school_id=r["school_id"],
        address=r["address"],
        room_id=r["room_id"],
        location=r["location"],
        model=r["model"],
        mac=r["mac"],
        bssids=tuple(sorted(bssids)),
        ssh_user=r["ssh_user"],
        ssh_port=r["ssh_port"],
    )


def server_of(r: Row) -> Server:
    return Server(r["server_id"], r["school_id"], r["address"], r["ssh_user"], r["ssh_port"])


def facts_json(result: ProbeResult) -> str:
    # JSON has no NaN or infinity, and a dashboard has no use for them. A NUL in a key
    # is written as \u0000, which both databases' text holds.
    return json.dumps({k: v for k, v in result.facts.items() if math.isfinite(v)}, sort_keys=True)


# Each save adds a row with INSERT ... ON CONFLICT DO NOTHING first: of two controllers
# importing one row at once, exactly one adds it (the other waits for its commit, then
# finds the row). A row there already is read under a lock (``for_update``) and
# compared, so that the verdicts of concurrent imports add up.


def save_school(tx: Tx, school: School, now: float) -> str:
    values = (school.school_id, school.name, now)
    added = tx.execute(
        "INSERT INTO schools (school_id, name, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (school_id) DO NOTHING",
        values,
    ).rowcount
    if added:
        return "added"
    # Conditional, so it is its own lock and check: a second import waits for the
    # first's row and then finds the name it gives.
    changed = tx.execute(
        "UPDATE schools SET name = ?, updated_at = ? WHERE school_id = ? AND name != ?",
        (school.name, now, school.school_id, school.name),
    ).rowcount
    return "updated" if changed else "unchanged"


def save_room(tx: Tx, room: Room) -> str:
    added = tx.execute(
        "INSERT INTO rooms (school_id, room_id) VALUES (?, ?) "
        "ON CONFLICT (school_id, room_id) DO NOTHING",
        (room.school_id, room.room_id),
    ).rowcount
    return "added" if added else "unchanged"


def save_access_point(tx: Tx, ap: AccessPoint, now: float, for_update: str) -> str:
    values = (ap.ap_id, ap.school_id, ap.room_id, ap.location, ap.model, ap.mac, ap.address,
              ap.ssh_user, ap.ssh_port, now)  # fmt: skip
    added = tx.execute(
        f"INSERT INTO access_points ({_AP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (ap_id) DO NOTHING",
        values,
    ).rowcount
    if not added:
        key = (ap.ap_id,)
        # Its BSSIDs change only under this row's lock, so they are read as of it.
        row = tx.execute(
            f"SELECT {_AP_COLUMNS} FROM access_points WHERE ap_id = ?{for_update}", key
        ).fetchone()
        old = [
            r["bssid"]
            for r in tx.execute("SELECT bssid FROM ap_bssids WHERE ap_id = ?", key).fetchall()
        ]
        if row is not None and access_point_of(row, old) == ap:
            return "unchanged"
        tx.execute(_AP_UPSERT, values)
        tx.execute("DELETE FROM ap_bssids WHERE ap_id = ?", key)
    if ap.bssids:
        tx.executemany(
            "INSERT INTO ap_bssids (bssid, ap_id) VALUES (?, ?)", [(b, ap.ap_id) for b in ap.bssids]
        )
    return "added" if added else "updated"


def save_server(tx: Tx, s: Server, now: float, for_update: str) -> str:
    values = (s.server_id, s.school_id, s.address, s.ssh_user, s.ssh_port, now)
    added = tx.execute(
        f"INSERT INTO servers ({_SERVER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (server_id) DO NOTHING",
        values,
    ).rowcount
    if added:
        return "added"
    row = tx.execute(
        f"SELECT {_SERVER_COLUMNS} FROM servers WHERE server_id = ?{for_update}", (s.server_id,)
    ).fetchone()
    if row is not None and server_of(row) == s:
        return "unchanged"
    tx.execute(_SERVER_UPSERT, values)
    return "updated"
