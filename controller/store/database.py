"""The SQLite file every feature's store shares: connections, migrations, errors.

Writes go through one connection behind a lock; reads use a connection per
thread, so scrapes and admin calls never wait for a write batch.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from controller.datadir.private_files import private_sqlite
from controller.errors import StoreError
from controller.store.migrations import LATEST, MIGRATIONS
from controller.store.sql import SQLITE, Dialect, Params

log = logging.getLogger(__name__)


class Database:
    """One SQLite file in WAL mode; each feature's store is made with it (an
    SqlDatabase, controller/store/sql.py)."""

    dialect: Dialect = SQLITE

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self.write_lock = threading.Lock()
        try:
            private_sqlite(path)
            self.writer = self._connect()
            self.writer.execute("PRAGMA journal_mode=WAL")
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
        version: int = self.writer.execute("PRAGMA user_version").fetchone()[0]
        if version > LATEST:
            raise StoreError(
                f"database {self.path}: schema version {version} is newer than this "
                f"controller knows ({LATEST}); upgrade the controller"
            )
        for number in range(version + 1, LATEST + 1):
            # executescript commits first; BEGIN inside it makes each migration atomic.
            self.writer.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[number - 1]} PRAGMA user_version={number}; COMMIT;"
            )
            log.info("store migrated path=%s version=%d", self.path, number)

    def reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self.write_lock:
                self._readers.append(conn)
        return conn

    def write(self, sql: str, params: Params = ()) -> int:
        with self.write_lock:
            try:
                return self.writer.execute(sql, params).rowcount
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {exc}") from None

    def write_many(self, sql: str, params: Sequence[Params]) -> None:
        with self.write_lock:
            try:
                self.writer.execute("BEGIN IMMEDIATE")
                self.writer.executemany(sql, params)
                self.writer.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.writer.in_transaction:
                    self.writer.execute("ROLLBACK")
                raise StoreError(f"database {self.path}: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The writer inside BEGIN IMMEDIATE; any exception rolls everything back."""
        with self.write_lock:
            try:
                self.writer.execute("BEGIN IMMEDIATE")
                yield self.writer
                self.writer.execute("COMMIT")
            except BaseException as exc:
                if self.writer.in_transaction:
                    self.writer.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"database {self.path}: {exc}") from None
                raise

    def schema_version(self) -> int:
        """The schema version the file is at."""
        return int(self.reader().execute("PRAGMA user_version").fetchone()[0])

    def read(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        try:
            return self.reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from None

    def close(self) -> None:
        with self.write_lock:
            for conn in (self.writer, *self._readers):
                conn.close()
            self._readers.clear()
