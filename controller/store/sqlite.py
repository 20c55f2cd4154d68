"""The embedded store: one SQLite file in WAL mode.

Writes go through one connection behind a lock (the controller calls them from a
single writer thread); reads use a connection per thread, so scrapes and admin
calls never wait for a write batch. Acks promise durability, hence
``synchronous=FULL``: batching keeps its fsync cost to one per batch.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from controller.errors import StoreError
from controller.store.migrations import LATEST, MIGRATIONS
from controller.store.protocol import DeviceQuery, HeartbeatRow
from inventory.model import (
    DeviceIdentity,
    DeviceKind,
    DeviceRecord,
    DeviceStatus,
    Health,
    KindCount,
)

log = logging.getLogger(__name__)

# The status rule, in one place: online while a stream carries the device and its
# last heartbeat is within the device's own deadline.
ONLINE_SQL = (
    "(stream_id != 0 AND last_heartbeat IS NOT NULL AND last_heartbeat >= :now - offline_after)"
)

_DEVICE_COLUMNS = (
    "device_id, kind, school_id, room_id, hostname, agent_version, first_seen, stream_id, "
    "offline_after, last_heartbeat, last_seq, collected_at, cpu_percent, memory_percent, "
    f"disk_percent, uptime_seconds, load1, load5, load15, {ONLINE_SQL} AS online"
)


def _record(row: sqlite3.Row) -> DeviceRecord:
    health = None
    if row["collected_at"] is not None:
        health = Health(
            collected_at=row["collected_at"],
            cpu_percent=row["cpu_percent"],
            memory_percent=row["memory_percent"],
            disk_percent=row["disk_percent"],
            uptime_seconds=row["uptime_seconds"],
            load1=row["load1"],
            load5=row["load5"],
            load15=row["load15"],
        )
    return DeviceRecord(
        identity=DeviceIdentity(
            device_id=row["device_id"],
            kind=DeviceKind(row["kind"]),
            school_id=row["school_id"],
            room_id=row["room_id"],
            hostname=row["hostname"],
            agent_version=row["agent_version"],
        ),
        status=DeviceStatus.ONLINE if row["online"] else DeviceStatus.OFFLINE,
        stream_up=row["stream_id"] != 0,
        first_seen=row["first_seen"],
        last_heartbeat=row["last_heartbeat"],
        offline_after=row["offline_after"],
        last_seq=row["last_seq"],
        health=health,
    )


class SqliteStore:
    """A DeviceStore on one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._write_lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"database {path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _migrate(self) -> None:
        version: int = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version > LATEST:
            raise StoreError(
                f"database {self.path}: schema version {version} is newer than this "
                f"controller knows ({LATEST}); upgrade the controller"
            )
        for number in range(version + 1, LATEST + 1):
            # executescript commits first; BEGIN inside it makes each migration atomic.
            self._writer.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[number - 1]} PRAGMA user_version={number}; COMMIT;"
            )
            log.info("store migrated path=%s version=%d", self.path, number)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._write_lock:
                self._readers.append(conn)
        return conn

    def _write(self, sql: str, params: dict[str, object] | Sequence[object]) -> int:
        with self._write_lock:
            try:
                return self._writer.execute(sql, params).rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {exc}") from None

    def schema_version(self) -> int:
        """The schema version the file is at."""
        return int(self._reader().execute("PRAGMA user_version").fetchone()[0])

    def device_connected(
        self, identity: DeviceIdentity, stream_id: int, offline_after: float, now: float
    ) -> int:
        with self._write_lock:
            try:
                row = self._writer.execute(
                    """
                    INSERT INTO devices (device_id, kind, school_id, room_id, hostname,
                                         agent_version, first_seen, stream_id, offline_after)
                    VALUES (:device_id, :kind, :school_id, :room_id, :hostname,
                            :agent_version, :now, :stream_id, :offline_after)
                    ON CONFLICT (device_id) DO UPDATE SET
                        kind = excluded.kind, school_id = excluded.school_id,
                        room_id = excluded.room_id, hostname = excluded.hostname,
                        agent_version = excluded.agent_version,
                        stream_id = excluded.stream_id, offline_after = excluded.offline_after
                    RETURNING last_seq
                    """,
                    {
                        "device_id": identity.device_id,
                        "kind": identity.kind.value,
                        "school_id": identity.school_id,
                        "room_id": identity.room_id,
                        "hostname": identity.hostname,
                        "agent_version": identity.agent_version,
                        "now": now,
                        "stream_id": stream_id,
                        "offline_after": offline_after,
                    },
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {exc}") from None
        return int(row[0])

    def device_disconnected(self, device_id: str, stream_id: int) -> None:
        self._write(
            "UPDATE devices SET stream_id = 0 WHERE device_id = ? AND stream_id = ?",
            (device_id, stream_id),
        )

    def reset_streams(self) -> int:
        return self._write("UPDATE devices SET stream_id = 0 WHERE stream_id != 0", ())

    def record_heartbeats(self, rows: Sequence[HeartbeatRow]) -> None:
        params = [
            (
                r.received_at,
                r.seq,
                r.health.collected_at,
                r.health.cpu_percent,
                r.health.memory_percent,
                r.health.disk_percent,
                r.health.uptime_seconds,
                r.health.load1,
                r.health.load5,
                r.health.load15,
                r.device_id,
                r.seq,
            )
            for r in rows
        ]
        with self._write_lock:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                self._writer.executemany(
                    """
                    UPDATE devices SET last_heartbeat = ?, last_seq = ?, collected_at = ?,
                        cpu_percent = ?, memory_percent = ?, disk_percent = ?,
                        uptime_seconds = ?, load1 = ?, load5 = ?, load15 = ?
                    WHERE device_id = ? AND last_seq < ?
                    """,
                    params,
                )
                self._writer.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise StoreError(f"database {self.path}: {exc}") from None

    def list_devices(self, query: DeviceQuery, now: float) -> list[DeviceRecord]:
        where = ["device_id > :after"]
        params: dict[str, object] = {"now": now, "after": query.after_id, "limit": query.limit}
        if query.school_id is not None:
            where.append("school_id = :school")
            params["school"] = query.school_id
        if query.kind is not None:
            where.append("kind = :kind")
            params["kind"] = query.kind.value
        if query.status is not None:
            where.append(ONLINE_SQL if query.status is DeviceStatus.ONLINE else f"NOT {ONLINE_SQL}")
        sql = (
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE {' AND '.join(where)} "
            "ORDER BY device_id LIMIT :limit"
        )
        return [_record(row) for row in self._read(sql, params)]

    def get_device(self, device_id: str, now: float) -> DeviceRecord | None:
        rows = self._read(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = :id",
            {"id": device_id, "now": now},
        )
        return _record(rows[0]) if rows else None

    def fleet_counts(self, now: float, school_id: str | None = None) -> list[KindCount]:
        where = "WHERE school_id = :school" if school_id is not None else ""
        rows = self._read(
            f"""
            SELECT school_id, kind, SUM({ONLINE_SQL}) AS online, COUNT(*) AS total
            FROM devices {where} GROUP BY school_id, kind ORDER BY school_id, kind
            """,
            {"now": now, "school": school_id},
        )
        return [
            KindCount(
                school_id=r["school_id"],
                kind=DeviceKind(r["kind"]),
                online=r["online"],
                offline=r["total"] - r["online"],
            )
            for r in rows
        ]

    def _read(self, sql: str, params: dict[str, object]) -> list[sqlite3.Row]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from None

    def close(self) -> None:
        with self._write_lock:
            for conn in (self._writer, *self._readers):
                conn.close()
            self._readers.clear()
