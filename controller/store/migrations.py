"""Numbered schema migrations for the SQLite store, from the first table on.

Migration N brings ``PRAGMA user_version`` from N-1 to N. Append only: a released
migration is never edited, a change is a new one.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: devices and whether their stream is up.
    """
    CREATE TABLE devices (
        device_id      TEXT PRIMARY KEY,
        kind           TEXT NOT NULL,
        school_id      TEXT NOT NULL,
        room_id        TEXT NOT NULL,
        hostname       TEXT NOT NULL DEFAULT '',
        agent_version  TEXT NOT NULL DEFAULT '',
        first_seen     REAL NOT NULL,
        -- 0 while no stream carries the device; otherwise the stream's id, so that
        -- a replaced stream closing late cannot mark its successor down.
        stream_id      INTEGER NOT NULL DEFAULT 0,
        offline_after  REAL NOT NULL,
        last_heartbeat REAL,
        last_seq       INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX devices_by_school_kind ON devices (school_id, kind);
    """,
    # 2: the latest health each device reported.
    """
    ALTER TABLE devices ADD COLUMN collected_at REAL;
    ALTER TABLE devices ADD COLUMN cpu_percent REAL;
    ALTER TABLE devices ADD COLUMN memory_percent REAL;
    ALTER TABLE devices ADD COLUMN disk_percent REAL;
    ALTER TABLE devices ADD COLUMN uptime_seconds REAL;
    ALTER TABLE devices ADD COLUMN load1 REAL;
    ALTER TABLE devices ADD COLUMN load5 REAL;
    ALTER TABLE devices ADD COLUMN load15 REAL;
    """,
)

LATEST = len(MIGRATIONS)
