"""The infrastructure inventory, probe results, host keys and the devices' view of
the Wi-Fi in the SQLite store."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from collections.abc import Iterable, Sequence

from controller.infra.sql_rows import (
    access_point_of,
    facts_json,
    host_key_of,
    probe_of,
    save_access_point,
    save_school,
    save_server,
    target_of,
)
from controller.infra.store import InfraCensus, InventoryCounts
from controller.store.sql import SqlDatabase
from inventory.infra import (
    AccessPoint,
    HostKey,
    ProbeResult,
    ProbeTarget,
    Room,
    School,
    Server,
    TargetKind,
    TargetStatus,
    UnknownBssid,
)

_AP, _SERVER = TargetKind.AP.value, TargetKind.SERVER.value

# A target's latest probe and its host keys, joined to its inventory row ``t``.
_PROBE_JOINS = """
    LEFT JOIN probe_results p ON p.target_kind = :kind AND p.target_id = t.{id}
    LEFT JOIN host_keys pk ON pk.target_kind = :kind AND pk.target_id = t.{id} AND pk.pinned = 1
    LEFT JOIN host_keys sk ON sk.target_kind = :kind AND sk.target_id = t.{id} AND sk.pinned = 0
"""
_PROBE_COLUMNS = (
    "p.up, p.reason, p.facts, p.duration, p.probed_at, pk.key_type AS pinned_type, "
    "pk.key_data AS pinned_data, sk.key_type AS seen_type, sk.key_data AS seen_data"
)
_PROBE_UPSERT = """
    INSERT INTO probe_results VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (target_kind, target_id) DO UPDATE SET up = excluded.up,
        reason = excluded.reason, facts = excluded.facts, duration = excluded.duration,
        probed_at = excluded.probed_at
    WHERE excluded.probed_at >= probe_results.probed_at
"""
_KEY_UPSERT = """
    INSERT INTO host_keys VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (target_kind, target_id, pinned) DO UPDATE SET key_type = excluded.key_type,
        key_data = excluded.key_data, seen_at = excluded.seen_at
"""
_TABLES = {TargetKind.AP: ("access_points", "ap_id"), TargetKind.SERVER: ("servers", "server_id")}
# An access point no device has reported seeing since :since.
_UNSEEN = """NOT EXISTS (
    SELECT 1 FROM ap_bssids b JOIN bssid_seen s ON s.bssid = b.bssid
    WHERE b.ap_id = t.ap_id AND s.seen_at >= :since)"""
_CENSUS = """
    SELECT t.school_id,
        SUM(CASE WHEN p.up = 1 THEN 1 ELSE 0 END) AS up,
        SUM(CASE WHEN p.up = 0 THEN 1 ELSE 0 END) AS down,
        SUM(CASE WHEN p.up IS NULL THEN 1 ELSE 0 END) AS unknown,
        SUM({unseen}) AS unseen
    FROM {table} t
    LEFT JOIN probe_results p ON p.target_kind = :kind AND p.target_id = t.{id}
    GROUP BY t.school_id ORDER BY t.school_id
"""
# Devices' latest associations with BSSIDs no access point has, by the devices' school
# (``t``, for _filters).
_UNKNOWN_BSSIDS = """
    SELECT t.school_id, w.bssid, COUNT(*) AS devices, MAX(w.seen_at) AS last_seen,
        json_group_array(w.signal_dbm) AS signals
    FROM device_wifi w JOIN devices t ON t.device_id = w.device_id
    WHERE NOT EXISTS (SELECT 1 FROM ap_bssids b WHERE b.bssid = w.bssid) AND {scope}
    GROUP BY t.school_id, w.bssid ORDER BY t.school_id, w.bssid
"""


def _ids(values: Iterable[str]) -> str:
    return json.dumps(sorted(set(values)))


class SqlInfra:
    """An InfraStore on the shared SQLite file."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def known_schools(self, school_ids: Iterable[str]) -> set[str]:
        rows = self._db.read(
            "SELECT school_id FROM schools WHERE school_id IN (SELECT value FROM json_each(:ids))",
            {"ids": _ids(school_ids)},
        )
        return {r["school_id"] for r in rows}

    def school_ids(self) -> list[str]:
        rows = self._db.read(
            "SELECT school_id FROM schools UNION SELECT school_id FROM devices "
            "UNION SELECT school_id FROM lessons ORDER BY 1",
            {},
        )
        return [r["school_id"] for r in rows]

    def target_schools(self, kind: TargetKind, target_ids: Iterable[str]) -> dict[str, str]:
        table, id_column = _TABLES[kind]
        rows = self._db.read(
            f"SELECT {id_column} AS id, school_id FROM {table} "
            f"WHERE {id_column} IN (SELECT value FROM json_each(:ids))",
            {"ids": _ids(target_ids)},
        )
        return {r["id"]: r["school_id"] for r in rows}

    def bssid_owners(self, bssids: Iterable[str]) -> dict[str, str]:
        rows = self._db.read(
            "SELECT bssid, ap_id FROM ap_bssids WHERE bssid IN (SELECT value FROM json_each(:ids))",
            {"ids": _ids(bssids)},
        )
        return {r["bssid"]: r["ap_id"] for r in rows}

    def save_inventory(
        self,
        schools: Sequence[School],
        rooms: Sequence[Room],
        aps: Sequence[AccessPoint],
        servers: Sequence[Server],
        now: float,
    ) -> InventoryCounts:
        tally = {"added": 0, "updated": 0, "unchanged": 0}
        with self._db.transaction() as db:
            for school in schools:
                tally[save_school(db, school, now)] += 1
            for room in rooms:
                added = db.execute(
                    "INSERT OR IGNORE INTO rooms VALUES (?, ?)", (room.school_id, room.room_id)
                ).rowcount
                tally["added" if added else "unchanged"] += 1
            for ap in aps:
                tally[save_access_point(db, ap, now)] += 1
            for server in servers:
                tally[save_server(db, server, now)] += 1
        return InventoryCounts(**tally)

    def list_access_points(
        self,
        school_id: str | None,
        schools: frozenset[str] | None,
        *,
        down_only: bool = False,
        after_id: str = "",
        limit: int = 10_000,
    ) -> list[TargetStatus]:
        where, params = _filters(school_id, schools, down_only)
        where.append("t.ap_id > :after")
        params.update(kind=_AP, after=after_id, limit=limit)
        rows = self._db.read(
            f"SELECT t.*, {_PROBE_COLUMNS} FROM access_points t {_PROBE_JOINS.format(id='ap_id')} "
            f"WHERE {' AND '.join(where)} ORDER BY t.ap_id LIMIT :limit",
            params,
        )
        if not rows:
            return []
        ids: dict[str, object] = {"ids": _ids(r["ap_id"] for r in rows)}
        in_ids = "b.ap_id IN (SELECT value FROM json_each(:ids))"
        bssids: dict[str, list[str]] = {}
        for r in self._db.read(f"SELECT b.ap_id, b.bssid FROM ap_bssids b WHERE {in_ids}", ids):
            bssids.setdefault(r["ap_id"], []).append(r["bssid"])
        signals: dict[str, list[float | None]] = {}
        for r in self._db.read(
            "SELECT b.ap_id, w.signal_dbm FROM ap_bssids b "
            f"JOIN device_wifi w ON w.bssid = b.bssid WHERE {in_ids}",
            ids,
        ):
            signals.setdefault(r["ap_id"], []).append(r["signal_dbm"])
        seen = {
            r["ap_id"]: r["seen_at"]
            for r in self._db.read(
                "SELECT b.ap_id, MAX(s.seen_at) AS seen_at FROM ap_bssids b "
                f"JOIN bssid_seen s ON s.bssid = b.bssid WHERE {in_ids} GROUP BY b.ap_id",
                ids,
            )
        }
        found = []
        for r in rows:
            ap_id = r["ap_id"]
            heard = [s for s in signals.get(ap_id, []) if s is not None]
            found.append(
                TargetStatus(
                    target=target_of(TargetKind.AP, ap_id, r),
                    latest=probe_of(TargetKind.AP, ap_id, r),
                    devices=len(signals.get(ap_id, [])),
                    median_signal_dbm=statistics.median(heard) if heard else None,
                    last_seen_by_device=seen.get(ap_id),
                    access_point=access_point_of(r, bssids.get(ap_id, [])),
                )
            )
        return found

    def list_servers(
        self, school_id: str | None, schools: frozenset[str] | None, *, down_only: bool = False
    ) -> list[TargetStatus]:
        where, params = _filters(school_id, schools, down_only)
        return self._servers(where, params)

    def get_server(self, server_id: str) -> TargetStatus | None:
        found = self._servers(["t.server_id = :id"], {"id": server_id})
        return found[0] if found else None

    def _servers(self, where: list[str], params: dict[str, object]) -> list[TargetStatus]:
        rows = self._db.read(
            f"SELECT t.*, {_PROBE_COLUMNS} FROM servers t {_PROBE_JOINS.format(id='server_id')} "
            f"WHERE {' AND '.join(where) or 'TRUE'} ORDER BY t.server_id",
            {**params, "kind": _SERVER},
        )
        return [
            TargetStatus(
                target=target_of(TargetKind.SERVER, r["server_id"], r),
                latest=probe_of(TargetKind.SERVER, r["server_id"], r),
            )
            for r in rows
        ]

    def probe_targets(self) -> list[ProbeTarget]:
        found: list[ProbeTarget] = []
        for kind, (table, id_column) in _TABLES.items():
            rows = self._db.read(
                f"SELECT t.*, pk.key_type AS pinned_type, pk.key_data AS pinned_data "
                f"FROM {table} t LEFT JOIN host_keys pk ON pk.target_kind = :kind "
                f"AND pk.target_id = t.{id_column} AND pk.pinned = 1 ORDER BY t.{id_column}",
                {"kind": kind.value},
            )
            found += (target_of(kind, r[id_column], r) for r in rows)
        return found

    def record_probes(self, results: Sequence[ProbeResult]) -> None:
        with self._db.transaction() as db:
            db.executemany(
                _PROBE_UPSERT,
                [
                    (r.kind.value, r.target_id, int(r.up), r.reason, facts_json(r), r.duration,
                     r.probed_at)
                    for r in results
                ],
            )  # fmt: skip
            for r in results:
                if r.seen_key is not None:
                    self._seen_key(db, r)

    @staticmethod
    def _seen_key(db: sqlite3.Connection, r: ProbeResult) -> None:
        assert r.seen_key is not None
        target = (r.kind.value, r.target_id)
        where = "target_kind = ? AND target_id = ?"
        pinned = db.execute(
            f"SELECT key_type, key_data FROM host_keys WHERE {where} AND pinned = 1", target
        ).fetchone()
        if pinned is not None and host_key_of(*pinned) == r.seen_key:
            db.execute(f"DELETE FROM host_keys WHERE {where} AND pinned = 0", target)
            return
        db.execute(_KEY_UPSERT, (*target, 0, r.seen_key.key_type, r.seen_key.key_data, r.probed_at))

    def trust_host_key(
        self, kind: TargetKind, target_id: str, now: float, expected: HostKey | None = None
    ) -> HostKey | None:
        target = (kind.value, target_id)
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT key_type, key_data FROM host_keys "
                "WHERE target_kind = ? AND target_id = ? AND pinned = 0",
                target,
            ).fetchone()
            key = host_key_of(*row) if row is not None else None
            if key is None or (expected is not None and key != expected):
                return None
            db.execute(_KEY_UPSERT, (*target, 1, key.key_type, key.key_data, now))
            db.execute(
                "DELETE FROM host_keys WHERE target_kind = ? AND target_id = ? AND pinned = 0",
                target,
            )
        return key

    def infra_counts(self) -> list[tuple[str, TargetKind, int, int]]:
        return [(c.school_id, c.kind, c.up, c.down) for c in self.infra_census(math.inf)]

    def infra_census(self, seen_since: float) -> list[InfraCensus]:
        found: list[InfraCensus] = []
        for kind, (table, id_column) in _TABLES.items():
            unseen = _UNSEEN if kind is TargetKind.AP else "0"
            sql = _CENSUS.format(table=table, id=id_column, unseen=unseen)
            for r in self._db.read(sql, {"kind": kind.value, "since": seen_since}):
                found.append(
                    InfraCensus(r["school_id"], kind, r["up"], r["down"], r["unknown"], r["unseen"])
                )
        return found

    def unknown_bssids(self, schools: frozenset[str] | None) -> list[UnknownBssid]:
        where, params = _filters(None, schools, down_only=False)
        found = []
        for r in self._db.read(_UNKNOWN_BSSIDS.format(scope=" AND ".join(where) or "TRUE"), params):
            heard = [s for s in json.loads(r["signals"]) if s is not None]
            median = statistics.median(heard) if heard else None
            found.append(
                UnknownBssid(r["school_id"], r["bssid"], r["devices"], median, r["last_seen"])
            )
        return found


def _filters(
    school_id: str | None, schools: frozenset[str] | None, down_only: bool
) -> tuple[list[str], dict[str, object]]:
    where: list[str] = []
    params: dict[str, object] = {}
    if school_id is not None:
        where.append("t.school_id = :school")
        params["school"] = school_id
    if schools is not None:
        where.append("t.school_id IN (SELECT value FROM json_each(:schools))")
        params["schools"] = _ids(schools)
    if down_only:
        where.append("p.up = 0")
    return where, params
