"""The infrastructure inventory, probe results, host keys and the devices' view of
the Wi-Fi in the store, on either database."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from controller.infra.sql_rows import (
    access_point_of,
    check_rows,
    facts_json,
    host_key_of,
    kept,
    kept_key,
    keyable,
    keyable_ids,
    probe_of,
    save_access_point,
    save_room,
    save_school,
    save_server,
    target_of,
)
from controller.infra.store import InfraCensus, InventoryCounts
from controller.store.sql import SqlDatabase, Tx
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
# Of two controllers recording one target at once, the second waits for the first's
# row and compares with what it wrote: the newer probe stays either way.
_PROBE_UPSERT = """
    INSERT INTO probe_results (target_kind, target_id, up, reason, facts, duration, probed_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (target_kind, target_id) DO UPDATE SET up = excluded.up,
        reason = excluded.reason, facts = excluded.facts, duration = excluded.duration,
        probed_at = excluded.probed_at
    WHERE excluded.probed_at >= probe_results.probed_at
"""
_KEY_UPSERT = """
    INSERT INTO host_keys (target_kind, target_id, pinned, key_type, key_data, seen_at)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (target_kind, target_id, pinned) DO UPDATE SET key_type = excluded.key_type,
        key_data = excluded.key_data, seen_at = excluded.seen_at
"""
_KEY_WHERE = "target_kind = ? AND target_id = ?"
_TABLES = {TargetKind.AP: ("access_points", "ap_id"), TargetKind.SERVER: ("servers", "server_id")}
# 1 for an access point no device has reported seeing since :since.
_UNSEEN = """CASE WHEN NOT EXISTS (
    SELECT 1 FROM ap_bssids b JOIN bssid_seen s ON s.bssid = b.bssid
    WHERE b.ap_id = t.ap_id AND s.seen_at >= :since) THEN 1 ELSE 0 END"""
_CENSUS = """
    SELECT t.school_id,
        SUM(CASE WHEN p.up = 1 THEN 1 ELSE 0 END) AS up,
        SUM(CASE WHEN p.up = 0 THEN 1 ELSE 0 END) AS down,
        SUM(CASE WHEN p.up IS NULL THEN 1 ELSE 0 END) AS unknown,
        SUM({unseen}) AS unseen
    FROM {table} t
    LEFT JOIN probe_results p ON p.target_kind = :kind AND p.target_id = t.{id}
    GROUP BY t.school_id ORDER BY {order}
"""
# Devices' latest associations with BSSIDs no access point has, with the devices'
# school (``t``, for _filters). Grouped here, not in SQL: the median has no portable
# aggregate, and there is a row per device at most.
_UNKNOWN_BSSIDS = """
    SELECT t.school_id, w.bssid, w.signal_dbm, w.seen_at
    FROM device_wifi w JOIN devices t ON t.device_id = w.device_id
    WHERE NOT EXISTS (SELECT 1 FROM ap_bssids b WHERE b.bssid = w.bssid) AND {scope}
"""


def _probe_order(r: ProbeResult) -> tuple[str, str]:
    return (r.kind.value, r.target_id)


class SqlInfra:
    """An InfraStore on the shared database. Safe for several controllers on one
    PostgreSQL database: an import's verdicts add up, the newest probe stays, and a
    seen host key is pinned once."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def _in(self, column: str, values: Iterable[str]) -> tuple[str, dict[str, object]]:
        """The condition that ``column`` is one of ``values``, and its parameter."""
        listed = self._db.dialect.listed(keyable_ids(values))
        return self._db.dialect.one_of(column, ":ids"), {"ids": listed}

    def known_schools(self, school_ids: Iterable[str]) -> set[str]:
        where, params = self._in("school_id", school_ids)
        rows = self._db.read(f"SELECT school_id FROM schools WHERE {where}", params)
        return {r["school_id"] for r in rows}

    def school_ids(self) -> list[str]:
        rows = self._db.read(
            "SELECT school_id FROM schools UNION SELECT school_id FROM devices "
            "UNION SELECT school_id FROM lessons",
            {},
        )
        # By code point, as SQLite's ORDER BY was, whatever PostgreSQL's locale.
        return sorted(r["school_id"] for r in rows)

    def target_schools(self, kind: TargetKind, target_ids: Iterable[str]) -> dict[str, str]:
        table, id_column = _TABLES[kind]
        where, params = self._in(id_column, target_ids)
        rows = self._db.read(
            f"SELECT {id_column} AS id, school_id FROM {table} WHERE {where}", params
        )
        return {r["id"]: r["school_id"] for r in rows}

    def bssid_owners(self, bssids: Iterable[str]) -> dict[str, str]:
        where, params = self._in("bssid", bssids)
        rows = self._db.read(f"SELECT bssid, ap_id FROM ap_bssids WHERE {where}", params)
        return {r["bssid"]: r["ap_id"] for r in rows}

    def save_inventory(
        self,
        schools: Sequence[School],
        rooms: Sequence[Room],
        aps: Sequence[AccessPoint],
        servers: Sequence[Server],
        now: float,
    ) -> InventoryCounts:
        check_rows([*schools, *rooms, *aps, *servers])
        lock = self._db.dialect.for_update
        tally = {"added": 0, "updated": 0, "unchanged": 0}
        # Rows are taken in id order: two controllers importing the same rows lock them
        # in one order, so neither waits for a row the other holds while it waits.
        with self._db.transaction() as tx:
            for school in sorted(schools, key=lambda s: s.school_id):
                tally[save_school(tx, school, now)] += 1
            for room in sorted(rooms, key=lambda r: (r.school_id, r.room_id)):
                tally[save_room(tx, room)] += 1
            for ap in sorted(aps, key=lambda a: a.ap_id):
                tally[save_access_point(tx, ap, now, lock)] += 1
            for server in sorted(servers, key=lambda s: s.server_id):
                tally[save_server(tx, server, now, lock)] += 1
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
        filtered = self._filters(school_id, schools, down_only)
        if filtered is None:
            return []
        where, params = filtered
        order = self._db.dialect.by_code_point("t.ap_id")
        where.append(f"{order} > :after")
        # No id holds a NUL, so the ids after "x\0..." are those after "x".
        params.update(kind=_AP, after=after_id.split("\x00", 1)[0], limit=limit)
        rows = self._db.read(
            f"SELECT t.*, {_PROBE_COLUMNS} FROM access_points t {_PROBE_JOINS.format(id='ap_id')} "
            f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT :limit",
            params,
        )
        if not rows:
            return []
        in_ids, ids = self._in("b.ap_id", (r["ap_id"] for r in rows))
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
        filtered = self._filters(school_id, schools, down_only)
        return [] if filtered is None else self._servers(*filtered)

    def get_server(self, server_id: str) -> TargetStatus | None:
        if not keyable(server_id):
            return None
        found = self._servers(["t.server_id = :id"], {"id": server_id})
        return found[0] if found else None

    def _servers(self, where: list[str], params: dict[str, object]) -> list[TargetStatus]:
        order = self._db.dialect.by_code_point("t.server_id")
        rows = self._db.read(
            f"SELECT t.*, {_PROBE_COLUMNS} FROM servers t {_PROBE_JOINS.format(id='server_id')} "
            f"WHERE {' AND '.join(where) or 'TRUE'} ORDER BY {order}",
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
            order = self._db.dialect.by_code_point(f"t.{id_column}")
            rows = self._db.read(
                f"SELECT t.*, pk.key_type AS pinned_type, pk.key_data AS pinned_data "
                f"FROM {table} t LEFT JOIN host_keys pk ON pk.target_kind = :kind "
                f"AND pk.target_id = t.{id_column} AND pk.pinned = 1 ORDER BY {order}",
                {"kind": kind.value},
            )
            found += (target_of(kind, r[id_column], r) for r in rows)
        return found

    def record_probes(self, results: Sequence[ProbeResult]) -> None:
        # A result for an id no target could have is of no target: left out, so that
        # it cannot fail the others on PostgreSQL. Sorted (stably: of one target's
        # results the last still wins a tie), so that controllers recording the same
        # targets lock their rows in one order and never deadlock.
        kept_results = sorted((r for r in results if keyable(r.target_id)), key=_probe_order)
        with self._db.transaction() as tx:
            tx.executemany(
                _PROBE_UPSERT,
                [
                    (r.kind.value, r.target_id, int(r.up), kept(r.reason), facts_json(r),
                     r.duration, r.probed_at)
                    for r in kept_results
                ],
            )  # fmt: skip
            for r in kept_results:
                if r.seen_key is not None:
                    self._seen_key(tx, r)

    def _seen_key(self, tx: Tx, r: ProbeResult) -> None:
        seen = kept_key(r.seen_key)
        assert seen is not None
        target = (r.kind.value, r.target_id)
        # The seen row is locked first, as trust_host_key locks it: if a trust is
        # pinning it now, this waits, and the pinned key read next is the trusted one.
        tx.execute(
            f"SELECT key_type FROM host_keys WHERE {_KEY_WHERE} AND pinned = 0"
            f"{self._db.dialect.for_update}",
            target,
        ).fetchall()
        pinned = tx.execute(
            f"SELECT key_type, key_data FROM host_keys WHERE {_KEY_WHERE} AND pinned = 1", target
        ).fetchone()
        if pinned is not None and host_key_of(pinned["key_type"], pinned["key_data"]) == seen:
            tx.execute(f"DELETE FROM host_keys WHERE {_KEY_WHERE} AND pinned = 0", target)
            return
        tx.execute(_KEY_UPSERT, (*target, 0, seen.key_type, seen.key_data, r.probed_at))

    def trust_host_key(
        self, kind: TargetKind, target_id: str, now: float, expected: HostKey | None = None
    ) -> HostKey | None:
        if not keyable(target_id):
            return None
        target = (kind.value, target_id)
        with self._db.transaction() as tx:
            # Locked: of two trusts at once, the second waits, then finds the seen key
            # pinned and gone, and pins nothing.
            row = tx.execute(
                f"SELECT key_type, key_data FROM host_keys WHERE {_KEY_WHERE} AND pinned = 0"
                f"{self._db.dialect.for_update}",
                target,
            ).fetchone()
            key = host_key_of(row["key_type"], row["key_data"]) if row is not None else None
            if key is None or (expected is not None and key != expected):
                return None
            tx.execute(_KEY_UPSERT, (*target, 1, key.key_type, key.key_data, now))
            tx.execute(f"DELETE FROM host_keys WHERE {_KEY_WHERE} AND pinned = 0", target)
        return key

    def infra_counts(self) -> list[tuple[str, TargetKind, int, int]]:
        return [(c.school_id, c.kind, c.up, c.down) for c in self.infra_census(math.inf)]

    def infra_census(self, seen_since: float) -> list[InfraCensus]:
        found: list[InfraCensus] = []
        order = self._db.dialect.by_code_point("t.school_id")
        for kind, (table, id_column) in _TABLES.items():
            unseen = _UNSEEN if kind is TargetKind.AP else "0"
            sql = _CENSUS.format(table=table, id=id_column, unseen=unseen, order=order)
            for r in self._db.read(sql, {"kind": kind.value, "since": seen_since}):
                found.append(
                    InfraCensus(
                        r["school_id"],
                        kind,
                        int(r["up"]),
                        int(r["down"]),
                        int(r["unknown"]),
                        int(r["unseen"]),
                    )
                )
        return found

    def unknown_bssids(self, schools: frozenset[str] | None) -> list[UnknownBssid]:
        filtered = self._filters(None, schools, down_only=False)
        if filtered is None:
            return []
        where, params = filtered
        heard: dict[tuple[str, str], list[tuple[float | None, float]]] = {}
        for r in self._db.read(_UNKNOWN_BSSIDS.format(scope=" AND ".join(where) or "TRUE"), params):
            heard.setdefault((r["school_id"], r["bssid"]), []).append(
                (r["signal_dbm"], r["seen_at"])
            )
        found = []
        for (school_id, bssid), reports in sorted(heard.items()):
            signals = [s for s, _ in reports if s is not None]
            median = statistics.median(signals) if signals else None
            found.append(
                UnknownBssid(school_id, bssid, len(reports), median, max(at for _, at in reports))
            )
        return found

    def _filters(
        self, school_id: str | None, schools: frozenset[str] | None, down_only: bool
    ) -> tuple[list[str], dict[str, object]] | None:
        """The conditions on ``t`` and their parameters; None when no row could match
        (a school id no row could have)."""
        where: list[str] = []
        params: dict[str, object] = {}
        if school_id is not None:
            if not keyable(school_id):
                return None
            where.append("t.school_id = :school")
            params["school"] = school_id
        if schools is not None:
            where.append(self._db.dialect.one_of("t.school_id", ":schools"))
            params["schools"] = self._db.dialect.listed(keyable_ids(schools))
        if down_only:
            where.append("p.up = 0")
        return where, params
