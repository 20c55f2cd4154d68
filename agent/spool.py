"""The offline spool: every message the agent owes the controller, on disk until acked.

It keeps bytes: the link serializes a message before it is appended and parses it
when it is sent (agent/link_messages.py); the spool only numbers and bounds them.

One SQLite file in WAL mode with ``synchronous=FULL``: an append or an ack is one
transaction, so a power cut mid-write leaves the old state or the new one, never a
torn file. Sequence numbers are handed out here and the counter lives in the same
file, so a restart never reuses one.

The spool is bounded in bytes. When it is full the oldest heartbeats go first;
lesson events and command results ("precious") are never dropped, even if that
takes the spool past its bound. Every drop is counted. A file that is not a
readable spool is moved aside (renamed, never deleted) and a new one started.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from agent.errors import SpoolError

T = TypeVar("T")

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY,
    precious INTEGER NOT NULL,
    -- A serialized AgentMessage whose seq is left 0; the row's seq is the truth.
    -- Every release has stored exactly this, so a spool outlives an upgrade.
    body     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_droppable ON messages (precious, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_META_DEFAULTS = {"next_seq": 1, "dropped": 0, "anchored": 0}
# Heartbeats dropped per query while making room.
_DROP_CHUNK = 64


@dataclass(frozen=True, slots=True)
class Spooled:
    """A message kept in the spool: its bytes (seq left 0) and the seq it goes out with."""

    seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What the spool holds and has lost."""

    pending: int
    pending_bytes: int
    dropped: int
    next_seq: int


class Spool:
    """A device's spool at ``path``; every method commits before it returns."""

    def __init__(self, path: Path, device_id: str, max_bytes: int) -> None:
        self.path = path
        self._device_id = device_id
        self._max_bytes = max_bytes
        # Goes up each time a bad file is replaced, so a sender knows to line up again.
        self.generation = 0
        # Every operation holds it: the link writes from worker threads (heartbeats,
        # acks and Welcome's line-up from asyncio's pool, lesson events and command
        # results from its one spool-writer thread), so that their fsyncs never stall
        # its event loop.
        self._lock = threading.RLock()
        self._db = self._open()
        self._closed = False

    # -- opening, and moving a bad file aside ------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            return self._open_checked()
        except sqlite3.Error as exc:
            if not _corrupt(exc):
                raise SpoolError(f"spool {self.path}: {exc}") from None
            self._move_aside(str(exc))
        try:
            return self._open_checked()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from None

    def _open_checked(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Used from the link's worker threads one at a time (self._lock).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            db.executescript(_SCHEMA)
            owner = db.execute("SELECT value FROM meta WHERE key = 'device_id'").fetchone()
            if owner is not None and owner[0] != self._device_id:
                raise sqlite3.DatabaseError(f"spool belongs to device {owner[0]!r}")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('device_id', ?)", (self._device_id,))
            for key, value in _META_DEFAULTS.items():
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            self._bytes = _stored_bytes(db)
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        moved = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(f"{moved}{suffix}")
        log.error(
            "spool unreadable, moved aside and started anew path=%s moved_to=%s reason=%s",
            self.path,
            moved,
            reason,
        )

    def _recover(self, exc: sqlite3.Error) -> None:
        """A spool that broke while in use: keep the file for a person, go on with a new one."""
        self._db.close()
        self._move_aside(str(exc))
        self._db = self._open_checked()
        self.generation += 1

    # -- the spool's operations --------------------------------------------------

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    def append(self, body: bytes, *, precious: bool) -> int | None:
        """Stores ``body`` (a serialized message, seq 0) under the next seq and returns
        the seq; None if it was dropped."""
        return self._run(lambda: self._append(body, precious))

    def _append(self, body: bytes, precious: bool) -> int | None:
        if not precious and self._bytes - self._droppable_bytes() + len(body) > self._max_bytes:
            # Dropping every older heartbeat would not make room: this one goes instead.
            self._count_dropped(1)
            log.warning("spool full of messages that are never dropped: heartbeat dropped")
            return None
        self._count_dropped(self._make_room(len(body)))
        seq = self._meta("next_seq")
        self._db.execute("INSERT INTO messages VALUES (?, ?, ?)", (seq, int(precious), body))
        self._set_meta("next_seq", seq + 1)
        self._bytes += len(body)
        if self._bytes > self._max_bytes:
            log.warning(
                "spool over its bound with messages that are never dropped bytes=%d max=%d",
                self._bytes,
                self._max_bytes,
            )
        return seq

    def _make_room(self, need: int) -> int:
        """Drops the oldest heartbeats until ``need`` more bytes fit; returns how many."""
        dropped = 0
        while self._bytes + need > self._max_bytes:
            rows = self._db.execute(
                "SELECT seq, length(body) FROM messages WHERE precious = 0 ORDER BY seq LIMIT ?",
                (_DROP_CHUNK,),
            ).fetchall()
            if not rows:
                break
            for seq, size in rows:
                self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
                self._bytes -= size
                dropped += 1
                if self._bytes + need <= self._max_bytes:
                    break
        return dropped

    def _droppable_bytes(self) -> int:
        return int(
            self._db.execute(
                "SELECT COALESCE(SUM(length(body)), 0) FROM messages WHERE precious = 0"
            ).fetchone()[0]
        )

    def _count_dropped(self, count: int) -> None:
        if count:
            self._set_meta("dropped", self._meta("dropped") + count)
            log.warning("spool full: oldest heartbeats dropped count=%d", count)

    def pending(self, after: int, limit: int) -> list[Spooled]:
        """Up to ``limit`` spooled messages with seq above ``after``, oldest first."""
        rows: list[tuple[int, bytes]] = self._run(
            lambda: self._db.execute(
                "SELECT seq, body FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        )
        return [Spooled(seq, body) for seq, body in rows]

    def acknowledge(self, seq: int) -> None:
        """The controller stored everything up to ``seq``: forget it."""
        self._run(lambda: self._forget_through(seq))

    def _forget_through(self, seq: int) -> None:
        size = self._db.execute(
            "SELECT COALESCE(SUM(length(body)), 0) FROM messages WHERE seq <= ?", (seq,)
        ).fetchone()[0]
        self._db.execute("DELETE FROM messages WHERE seq <= ?", (seq,))
        self._bytes -= int(size)

    def welcome(self, last_stored_seq: int) -> None:
        """Lines the spool up with what the controller has stored for this device.

        A spool that has never met the controller (new, or started anew after a bad
        file) numbered its messages from 1; those are renumbered to follow what the
        controller has, so that none is taken for already stored. Afterwards, the
        controller's number is the truth: everything up to it is forgotten.
        """
        self._run(lambda: self._welcome(last_stored_seq))

    def _welcome(self, last_stored_seq: int) -> None:
        if not self._meta("anchored"):
            lowest = self._db.execute("SELECT MIN(seq) FROM messages").fetchone()[0]
            if lowest is not None and lowest <= last_stored_seq:
                shift = last_stored_seq + 1 - lowest
                # Two steps, so that no intermediate seq collides with another row's.
                self._db.execute("UPDATE messages SET seq = -seq")
                self._db.execute("UPDATE messages SET seq = -seq + ?", (shift,))
                self._set_meta("next_seq", self._meta("next_seq") + shift)
                log.info("spool renumbered after the controller's count shift=%d", shift)
            self._set_meta("anchored", 1)
        self._forget_through(last_stored_seq)
        self._set_meta("next_seq", max(self._meta("next_seq"), last_stored_seq + 1))

    def stats(self) -> SpoolStats:
        """Counts for heartbeats and logs."""
        return self._run(
            lambda: SpoolStats(
                int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]),
                self._bytes,
                self._meta("dropped"),
                self._meta("next_seq"),
            )
        )

    def close(self) -> None:
        """Folds the write-ahead log into the file and closes it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:
                log.error("spool not checkpointed path=%s reason=%s", self.path, exc)
            self._db.close()

    def _run(self, operation: Callable[[], T]) -> T:
        """Runs ``operation`` in one transaction; a corrupt file is moved aside and the
        operation retried once on a new one. Other failures are a SpoolError."""
        with self._lock:
            # A write that lost the race with shutdown's close: the closed connection's
            # error has no code and would read as a bad file, moved aside with what it holds.
            if self._closed:
                raise SpoolError(f"spool {self.path} is closed")
            return self._run_locked(operation)

    def _run_locked(self, operation: Callable[[], T]) -> T:
        try:
            with _Transaction(self._db):
                return operation()
        except sqlite3.Error as exc:
            if not _corrupt(exc):
                self._recount()
                raise SpoolError(f"spool {self.path}: {exc}") from None
            self._recover(exc)
        try:
            with _Transaction(self._db):
                return operation()
        except sqlite3.Error as exc:
            self._recount()
            raise SpoolError(f"spool {self.path}: {exc}") from None

    def _recount(self) -> None:
        """After a rollback, the byte count is read again from what is stored."""
        with contextlib.suppress(sqlite3.Error):
            self._bytes = _stored_bytes(self._db)


def _stored_bytes(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(SUM(length(body)), 0) FROM messages").fetchone()[0])


def _corrupt(exc: sqlite3.Error) -> bool:
    """Whether the file itself is bad (as opposed to, say, a full disk)."""
    code = getattr(exc, "sqlite_errorcode", None)
    # No code: our own integrity-check failure or a foreign spool.
    return code is None or code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")
