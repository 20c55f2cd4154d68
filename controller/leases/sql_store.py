"""Leases in the store, on either database.

Whether a lease has expired is judged by the database's clock alone: replicas'
clocks may differ, the database's is one. Taking and renewing is one statement, so
two controllers asking at once cannot both win: the row's lock orders them and the
second sees the first's holder.
"""

from __future__ import annotations

from controller.leases.store import Lease
from controller.store.sql import Row, SqlDatabase

_COLUMNS = "name, holder, epoch, expires_at"


def _lease(r: Row) -> Lease:
    return Lease(r["name"], r["holder"], int(r["epoch"]), float(r["expires_at"]))


class SqlLeases:
    """A LeaseStore."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        now = db.dialect.now_seconds
        # A free or expired lease goes to the asker with the next epoch; the holder's
        # own renewal keeps its epoch. Any other holder's live lease is left alone and
        # nothing is returned.
        self._take = (
            f"INSERT INTO leases ({_COLUMNS}) VALUES (:name, :holder, 1, {now} + :ttl) "
            "ON CONFLICT (name) DO UPDATE SET "
            "epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > "
            f"{now} THEN leases.epoch ELSE leases.epoch + 1 END, "
            "holder = excluded.holder, expires_at = excluded.expires_at "
            f"WHERE leases.holder = excluded.holder OR leases.expires_at <= {now} "
            f"RETURNING {_COLUMNS}"
        )

    def take(self, name: str, holder: str, ttl: float) -> Lease | None:
        with self._db.transaction() as tx:
            row = tx.execute(self._take, {"name": name, "holder": holder, "ttl": ttl}).fetchone()
        return _lease(row) if row is not None else None

    def release(self, lease: Lease) -> bool:
        # Expired at once rather than deleted: the epoch must keep growing.
        return bool(
            self._db.write(
                f"UPDATE leases SET expires_at = {self._db.dialect.now_seconds} - 1 "
                "WHERE name = :name AND holder = :holder AND epoch = :epoch",
                {"name": lease.name, "holder": lease.holder, "epoch": lease.epoch},
            )
        )

    def forget_holders(self) -> int:
        """Ends every lease at once, keeping the epochs (a controller alone on its
        store, at start-up: no holder from before survives a restart, and waiting for
        a crashed one's leases to expire would hold the lessons back); how many."""
        now = self._db.dialect.now_seconds
        return self._db.write(f"UPDATE leases SET expires_at = {now} - 1 WHERE expires_at > {now}")

    def current(self, name: str) -> Lease | None:
        rows = self._db.read(f"SELECT {_COLUMNS} FROM leases WHERE name = :name", {"name": name})
        return _lease(rows[0]) if rows else None
