"""Schools' uplink checks in the SQLite store (table from migration 10)."""

from __future__ import annotations

import json
import sqlite3

from controller.errors import StoreError
from controller.store.sql import SqlDatabase
from inventory.uplink import UplinkCheck

# Running: neither a measurement nor an error yet.
_RUNNING = "seconds IS NULL AND error = ''"
# Schools with checks, walked one index step per school: a city's years of checks are
# millions of rows, a scrape reads one row per school.
_EVERY_SCHOOL = """
    schools(id) AS (
        SELECT MIN(school_id) FROM uplink_checks
        UNION ALL
        SELECT (SELECT MIN(school_id) FROM uplink_checks WHERE school_id > schools.id)
        FROM schools WHERE schools.id IS NOT NULL
    )
"""


def _check(row: sqlite3.Row) -> UplinkCheck:
    return UplinkCheck(
        school_id=row["school_id"],
        started_at=row["started_at"],
        device_id=row["device_id"],
        bytes=row["bytes"],
        seconds=row["seconds"],
        mbps=row["mbps"],
        error=row["error"],
    )


class SqlUplink:
    """UplinkStore on the shared SQLite file."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def start_uplink_check(self, check: UplinkCheck, stale_before: float) -> bool:
        # One statement: two controllers (or a hand check and the schedule) starting the
        # same school at once cannot both find it idle.
        return (
            self._db.write(
                f"""
                INSERT INTO uplink_checks (school_id, started_at, device_id, bytes)
                SELECT :school, :started, :device, :bytes
                WHERE NOT EXISTS (
                    SELECT 1 FROM uplink_checks
                    WHERE school_id = :school AND started_at >= :stale AND {_RUNNING}
                )
                ON CONFLICT DO NOTHING
                """,
                {
                    "school": check.school_id,
                    "started": check.started_at,
                    "device": check.device_id,
                    "bytes": check.bytes,
                    "stale": stale_before,
                },
            )
            == 1
        )

    def finish_uplink_check(
        self,
        school_id: str,
        started_at: float,
        received: int,
        seconds: float | None,
        mbps: float | None,
        error: str,
    ) -> UplinkCheck | None:
        with self._db.write_lock:
            try:
                row = self._db.writer.execute(
                    f"""
                    UPDATE uplink_checks SET bytes = :bytes, seconds = :seconds, mbps = :mbps,
                        error = :error
                    WHERE school_id = :school AND started_at = :started AND {_RUNNING}
                    RETURNING *
                    """,
                    {
                        "school": school_id,
                        "started": started_at,
                        "bytes": received,
                        "seconds": seconds,
                        "mbps": mbps,
                        "error": error,
                    },
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"database {self._db.path}: {exc}") from None
        return None if row is None else _check(row)

    def expire_uplink_checks(self, started_before: float, error: str) -> int:
        return self._db.write(
            f"UPDATE uplink_checks SET error = ? WHERE started_at < ? AND {_RUNNING}",
            (error, started_before),
        )

    def prune_uplink_checks(self, started_before: float) -> int:
        return self._db.write("DELETE FROM uplink_checks WHERE started_at < ?", (started_before,))

    def uplink_last_started(self) -> dict[str, float]:
        rows = self._db.read(
            f"""
            WITH RECURSIVE {_EVERY_SCHOOL}
            SELECT id, (SELECT MAX(started_at) FROM uplink_checks WHERE school_id = id) AS last
            FROM schools WHERE id IS NOT NULL
            """,
            {},
        )
        return {r["id"]: r["last"] for r in rows}

    def latest_uplink_checks(
        self,
        school_id: str | None = None,
        schools: frozenset[str] | None = None,
        *,
        measured: bool = False,
    ) -> list[UplinkCheck]:
        params: dict[str, object] = {}
        if school_id is not None:
            which = "schools(id) AS (SELECT :school)"
            params["school"] = school_id
        elif schools is not None:
            which = "schools(id) AS (SELECT value FROM json_each(:schools))"
            params["schools"] = json.dumps(sorted(schools))
        else:
            which = _EVERY_SCHOOL
        only = "AND mbps IS NOT NULL" if measured else ""
        rows = self._db.read(
            f"""
            WITH RECURSIVE {which}
            SELECT c.* FROM schools JOIN uplink_checks c ON c.rowid = (
                SELECT rowid FROM uplink_checks WHERE school_id = schools.id {only}
                ORDER BY started_at DESC LIMIT 1
            )
            ORDER BY c.school_id
            """,
            params,
        )
        return [_check(r) for r in rows]

    def uplink_failures(self) -> dict[str, int]:
        rows = self._db.read(
            f"""
            WITH RECURSIVE {_EVERY_SCHOOL}
            SELECT id, (
                SELECT COUNT(*) FROM uplink_checks c
                WHERE c.school_id = id AND c.error != '' AND c.started_at > COALESCE(
                    (SELECT MAX(started_at) FROM uplink_checks m
                     WHERE m.school_id = id AND m.mbps IS NOT NULL), -1)
            ) AS failures
            FROM schools WHERE id IS NOT NULL
            """,
            {},
        )
        return {r["id"]: r["failures"] for r in rows}
