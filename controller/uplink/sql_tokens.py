"""Uplink transfer tokens in the store, on either database (table from migration 14).

A token's life is judged by the database's clock alone: the controller that issues a
token and the one a device's fetch reaches may be two machines whose clocks differ,
and one clock at both ends means skew neither lengthens nor shortens a token's life
(the leases do the same). A take is one ``DELETE ... RETURNING``: of controllers
taking one token at once, the row's lock on PostgreSQL (the one writer on SQLite)
gives it to exactly one. Expired tokens, which only a device that never fetched or a
controller that stopped mid-check leaves, are swept as tokens are issued.
"""

from __future__ import annotations

from controller.store.sql import SqlDatabase
from controller.uplink.tokens import checked_grant, new_token, token_hash, well_formed

# Expired tokens deleted by one sweep at most: each issue sweeps, so a backlog (a
# controller that was down) goes within a few checks without one long statement.
_SWEEP_MAX = 1000


class SqlTokens:
    """Tokens (controller/uplink/tokens.py) in the store shared by the controllers."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        now = db.dialect.now_seconds
        # Rows another controller's sweep holds are its to delete: skipped rather than
        # waited for, and two sweeps locking rows in different orders cannot deadlock.
        skip = " FOR UPDATE SKIP LOCKED" if db.dialect.name == "postgresql" else ""
        self._sweep = (
            "DELETE FROM uplink_tokens WHERE token_hash IN (SELECT token_hash FROM "
            f"uplink_tokens WHERE expires_at <= {now} LIMIT {_SWEEP_MAX}{skip})"
        )
        self._insert = (
            "INSERT INTO uplink_tokens (token_hash, bytes, label, expires_at) "
            f"VALUES (:hash, :bytes, :label, {now} + :ttl)"
        )
        # Taken whether live or not: a used token and an expired one are both gone.
        self._take = (
            "DELETE FROM uplink_tokens WHERE token_hash = ? "
            f"RETURNING bytes, label, expires_at > {now} AS live"
        )

    def issue(self, size: int, ttl: float, label: str = "") -> str:
        checked_grant(size, ttl)
        token = new_token()
        params = {
            "hash": token_hash(token),
            "bytes": size,
            # PostgreSQL's text holds no NUL; a label is only ever logged.
            "label": label.replace("\x00", "\\x00"),
            "ttl": float(ttl),
        }
        with self._db.transaction() as tx:
            tx.execute(self._sweep)
            tx.execute(self._insert, params)
        return token

    def take(self, token: str) -> tuple[int, str] | None:
        if not well_formed(token):
            return None
        with self._db.transaction() as tx:
            row = tx.execute(self._take, (token_hash(token),)).fetchone()
        if row is None or not row["live"]:
            return None
        return int(row["bytes"]), str(row["label"])

    def revoke(self, token: str) -> None:
        if well_formed(token):
            self._db.write("DELETE FROM uplink_tokens WHERE token_hash = ?", (token_hash(token),))

    def sweep(self) -> int:
        """Deletes up to 1,000 expired tokens; returns how many."""
        with self._db.transaction() as tx:
            return tx.execute(self._sweep).rowcount
