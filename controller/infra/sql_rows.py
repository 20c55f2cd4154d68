"""Rows of the SQLite store's infrastructure tables to our values and back, for
``sqlite_infra``: the inventory's upserts, and a target's probe and host keys read
from the columns ``sqlite_infra`` joins."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence

from inventory.infra import (
    AccessPoint,
    HostKey,
    ProbeResult,
    ProbeTarget,
    School,
    Server,
    TargetKind,
)

_AP_UPSERT = """
    INSERT INTO access_points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (ap_id) DO UPDATE SET school_id = excluded.school_id,
        room_id = excluded.room_id, location = excluded.location, model = excluded.model,
        mac = excluded.mac, address = excluded.address, ssh_user = excluded.ssh_user,
        ssh_port = excluded.ssh_port, updated_at = excluded.updated_at
"""
_SERVER_UPSERT = """
    INSERT INTO servers VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (server_id) DO UPDATE SET school_id = excluded.school_id,
        address = excluded.address, ssh_user = excluded.ssh_user,
        ssh_port = excluded.ssh_port, updated_at = excluded.updated_at
"""


def host_key_of(key_type: str | None, key_data: str | None) -> HostKey | None:
    return HostKey(key_type, key_data) if key_type and key_data else None


def probe_of(kind: TargetKind, target_id: str, r: sqlite3.Row) -> ProbeResult | None:
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


def target_of(kind: TargetKind, target_id: str, r: sqlite3.Row) -> ProbeTarget:
    return ProbeTarget(
        kind=kind,
        target_id=target_id,
        school_id=r["school_id"],
        address=r["address"],
        ssh_user=r["ssh_user"],
        ssh_port=r["ssh_port"],
        pinned_key=host_key_of(r["pinned_type"], r["pinned_data"]),
    )


def access_point_of(r: sqlite3.Row, bssids: Sequence[str]) -> AccessPoint:
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


def server_of(r: sqlite3.Row) -> Server:
    return Server(r["server_id"], r["school_id"], r["address"], r["ssh_user"], r["ssh_port"])


def facts_json(result: ProbeResult) -> str:
    # JSON has no NaN or infinity, and a dashboard has no use for them.
    return json.dumps({k: v for k, v in result.facts.items() if math.isfinite(v)}, sort_keys=True)


def verdict(row: sqlite3.Row | None, same: bool) -> str:
    return "added" if row is None else "unchanged" if same else "updated"


def save_school(db: sqlite3.Connection, school: School, now: float) -> str:
    row = db.execute("SELECT name FROM schools WHERE school_id = ?", (school.school_id,)).fetchone()
    same = row is not None and row["name"] == school.name
    if not same:
        db.execute(
            "INSERT INTO schools VALUES (?, ?, ?) ON CONFLICT (school_id) "
            "DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
            (school.school_id, school.name, now),
        )
    return verdict(row, same)


def save_access_point(db: sqlite3.Connection, ap: AccessPoint, now: float) -> str:
    key = (ap.ap_id,)
    row = db.execute("SELECT * FROM access_points WHERE ap_id = ?", key).fetchone()
    old = [b for (b,) in db.execute("SELECT bssid FROM ap_bssids WHERE ap_id = ?", key)]
    same = row is not None and access_point_of(row, old) == ap
    if not same:
        db.execute(
            _AP_UPSERT,
            (ap.ap_id, ap.school_id, ap.room_id, ap.location, ap.model, ap.mac, ap.address,
             ap.ssh_user, ap.ssh_port, now),
        )  # fmt: skip
        db.execute("DELETE FROM ap_bssids WHERE ap_id = ?", key)
        db.executemany("INSERT INTO ap_bssids VALUES (?, ?)", [(b, ap.ap_id) for b in ap.bssids])
    return verdict(row, same)


def save_server(db: sqlite3.Connection, s: Server, now: float) -> str:
    row = db.execute("SELECT * FROM servers WHERE server_id = ?", (s.server_id,)).fetchone()
    same = row is not None and server_of(row) == s
    if not same:
        db.execute(
            _SERVER_UPSERT, (s.server_id, s.school_id, s.address, s.ssh_user, s.ssh_port, now)
        )
    return verdict(row, same)
