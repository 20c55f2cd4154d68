"""Schools' uplink checks in the store, on either database (table from migration 10).

A device's answer (the error text) is kept with its NULs written out as ``\\x00``:
PostgreSQL's text cannot hold one, and a check must still end. A school or device id
is the store's own, so one that no database could key on (a NUL, over
``ID_CHARS``) is refused on both alike.
"""

from __future__ import annotations

from controller.errors import StoreError
from controller.store.sql import Row, SqlDatabase, Tx
from inventory.uplink import UplinkCheck

# Characters of a school id the store keys checks on: four bytes each at most in
# UTF-8, well within a PostgreSQL index row (2704 bytes). Valid ids are 64 at most.
ID_CHARS = 200
_COLUMNS = "school_id, started_at, device_id, bytes, seconds, mbps, error"
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
# Any number, the same in every controller: with a school's hash it names the
# PostgreSQL advisory lock that lets one controller at a time start that school's check.
_START_LOCK = 0x0F1C


def _check(row: Row) -> UplinkCheck:
    return UplinkCheck(
        school_id=row["school_id"],
        started_at=row["started_at"],
        device_id=row["device_id"],
        bytes=row["bytes"],
        seconds=row["seconds"],
        mbps=row["mbps"],
        error=row["error"],
    )


def _keyable(school_id: str) -> bool:
    return "\x00" not in school_id and len(school_id) <= ID_CHARS


def _kept(text: str) -> str:
    return text.replace("\x00", "\\x00")


class SqlUplink:
    """UplinkStore on the shared database. Safe for several controllers on one
    PostgreSQL database: a school's check starts once, and ends once."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def _one_start_at_a_time(self, tx: Tx, school_id: str) -> None:
        # At READ COMMITTED two controllers' INSERT ... WHERE NOT EXISTS would each find
        # the school idle in their own snapshot (there is no row to lock when it has
        # none running). SQLite needs nothing: its one writer serialises transactions.
        if self._db.dialect.name == "postgresql":
            tx.execute(f"SELECT pg_advisory_xact_lock({_START_LOCK}, hashtext(?))", (school_id,))

    def start_uplink_check(
        self, check: UplinkCheck, stale_before: float, since: float | None = None
    ) -> bool:
        for what, value in (("school", check.school_id), ("device", check.device_id)):
            if "\x00" in value:
                where = f"uplink check of {what} {_kept(value)[:80]!r}"
                raise StoreError(f"{where}: a NUL character cannot be stored")
        if len(check.school_id) > ID_CHARS:
            raise StoreError(
                f"uplink check of school {check.school_id[:80]!r}...: an id over {ID_CHARS} "
                "characters"
            )
        params: dict[str, object] = {
            "school": check.school_id,
            "started": check.started_at,
            "device": check.device_id,
            "bytes": check.bytes,
            "stale": stale_before,
        }
        claimed = ""
        if since is not None:
            claimed, params["since"] = " OR started_at >= :since", since
        with self._db.transaction() as tx:
            self._one_start_at_a_time(tx, check.school_id)
            # A new statement, so on PostgreSQL a new snapshot: it sees a check another
            # controller started and committed while this one waited for the lock.
            started = tx.execute(
                f"""
                INSERT INTO uplink_checks (school_id, started_at, device_id, bytes)
                SELECT :school, :started, :device, :bytes
                WHERE NOT EXISTS (
                    SELECT 1 FROM uplink_checks
                    WHERE school_id = :school
                        AND ((started_at >= :stale AND {_RUNNING}){claimed})
                )
                ON CONFLICT (school_id, started_at) DO NOTHING
                """,
                params,
            ).rowcount
        return started == 1

    def finish_uplink_check(
        self,
        school_id: str,
        started_at: float,
        received: int,
        seconds: float | None,
        mbps: float | None,
        error: str,
    ) -> UplinkCheck | None:
        if not _keyable(school_id):
            return None
        # Conditional on still running: of two ends at once (the device's answer and a
        # sweep, or two controllers), the second waits for the first's row lock, finds
        # the check ended and changes nothing.
        with self._db.transaction() as tx:
            row = tx.execute(
                f"""
                UPDATE uplink_checks SET bytes = :bytes, seconds = :seconds, mbps = :mbps,
                    error = :error
                WHERE school_id = :school AND started_at = :started AND {_RUNNING}
                RETURNING {_COLUMNS}
                """,
                {
                    "school": school_id,
                    "started": started_at,
                    "bytes": received,
                    "seconds": seconds,
                    "mbps": mbps,
                    "error": _kept(error),
                },
            ).fetchone()
        return None if row is None else _check(row)

    def expire_uplink_checks(self, started_before: float, error: str) -> int:
        return self._db.write(
            f"UPDATE uplink_checks SET error = ? WHERE started_at < ? AND {_RUNNING}",
            (_kept(error), started_before),
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
        which, scope = _EVERY_SCHOOL, "TRUE"
        if school_id is not None:
            if not _keyable(school_id):
                return []
            which = "schools(id) AS (SELECT CAST(:school AS TEXT))"
            params["school"] = school_id
        elif schools is not None:
            # Each school's step is one index probe: a scope of many schools costs what
            # a scrape of every school does.
            scope = self._db.dialect.one_of("schools.id", ":schools")
            params["schools"] = self._db.dialect.listed(sorted(s for s in schools if _keyable(s)))
        only = "AND mbps IS NOT NULL" if measured else ""
        # The primary key is (school_id, started_at): a school's latest start is one row.
        rows = self._db.read(
            f"""
            WITH RECURSIVE {which}
            SELECT {", ".join(f"c.{c}" for c in _COLUMNS.split(", "))}
            FROM schools JOIN uplink_checks c ON c.school_id = schools.id AND c.started_at = (
                SELECT MAX(started_at) FROM uplink_checks
                WHERE school_id = schools.id {only}
            )
            WHERE {scope}
            ORDER BY {self._db.dialect.by_code_point("c.school_id")}
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
        return {r["id"]: int(r["failures"]) for r in rows}
