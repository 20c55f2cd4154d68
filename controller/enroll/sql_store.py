"""Enrollment tokens and device certificates in the SQLite store."""

from __future__ import annotations

import sqlite3

from controller.enroll import tokens as refusals
from controller.enroll.cert_store import CertCounts, CertState, Renewed
from controller.enroll.store import DeviceMove
from controller.errors import EnrollRefused, HostsClaimed, StoreError
from controller.store.sql import SqlDatabase
from inventory.model import Enrollment, EnrollToken


def _token(r: sqlite3.Row) -> EnrollToken:
    return EnrollToken(
        token_id=r["token_id"],
        school_id=r["school_id"],
        uses_left=r["uses_left"],
        uses=r["uses"],
        expires_at=r["expires_at"],
        created_at=r["created_at"],
        revoked_at=r["revoked_at"],
    )


_CERT_STATE = """
    SELECT e.device_id, e.school_id, e.serial, e.not_after, e.revoked_at,
           COALESCE(c.issued_at, e.enrolled_at) AS issued_at, COALESCE(c.ca_id, '') AS ca_id,
           c.next_serial
    FROM enrollments e LEFT JOIN device_certs c ON c.device_id = e.device_id
"""


def _cert_state(r: sqlite3.Row) -> CertState:
    return CertState(
        device_id=r["device_id"],
        school_id=r["school_id"],
        serial=r["serial"],
        not_after=r["not_after"],
        issued_at=r["issued_at"],
        ca_id=r["ca_id"],
        next_serial=r["next_serial"],
        revoked=r["revoked_at"] is not None,
    )


class SqlEnrollments:
    """An EnrollTokenStore and a CertStore: tokens kept as hashes, and each device's
    certificate with its renewals."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def cert_state(self, device_id: str) -> CertState | None:
        rows = self._db.read(f"{_CERT_STATE} WHERE e.device_id = :id", {"id": device_id})
        return _cert_state(rows[0]) if rows else None

    def cert_states(self) -> list[CertState]:
        return [_cert_state(r) for r in self._db.read(f"{_CERT_STATE} ORDER BY e.device_id", {})]

    def cert_counts(self, issuing_ca_id: str, expiring_before: float) -> CertCounts:
        rows = self._db.read(
            """
            SELECT COUNT(*), COALESCE(SUM(COALESCE(c.ca_id, '') != :ca), 0),
                   COALESCE(SUM(c.next_serial IS NOT NULL), 0),
                   COALESCE(SUM(e.not_after < :before), 0)
            FROM enrollments e LEFT JOIN device_certs c ON c.device_id = e.device_id
            WHERE e.revoked_at IS NULL
            """,
            {"ca": issuing_ca_id, "before": expiring_before},
        )
        return CertCounts(*(int(v) for v in rows[0]))

    def record_issued(self, device_id: str, ca_id: str, issued_at: float) -> None:
        self._db.write(
            """
            INSERT INTO device_certs (device_id, ca_id, issued_at) VALUES (?, ?, ?)
            ON CONFLICT (device_id) DO UPDATE SET ca_id = excluded.ca_id,
                issued_at = excluded.issued_at, next_serial = NULL, next_not_after = NULL,
                next_ca_id = NULL, next_issued_at = NULL
            """,
            (device_id, ca_id, issued_at),
        )

    def add_renewal(self, device_id: str, current_serial: str, renewed: Renewed) -> bool:
        r = renewed
        with self._db.transaction() as db:
            current = db.execute(
                "SELECT enrolled_at FROM enrollments WHERE device_id = ? AND serial = ? "
                "AND revoked_at IS NULL",
                (device_id, current_serial),
            ).fetchone()
            if current is None:
                return False
            # A device without a row keeps its enrollment's CA, unknown here ("").
            db.execute(
                """
                INSERT INTO device_certs (device_id, ca_id, issued_at) VALUES (?, '', ?)
                ON CONFLICT (device_id) DO NOTHING
                """,
                (device_id, current[0]),
            )
            db.execute(
                """
                UPDATE device_certs SET next_serial = ?, next_not_after = ?, next_ca_id = ?,
                    next_issued_at = ? WHERE device_id = ?
                """,
                (r.serial, r.not_after, r.ca_id, r.issued_at, device_id),
            )
        return True

    def confirm_renewal(self, device_id: str, serial: str) -> bool:
        with self._db.transaction() as db:
            renewed = db.execute(
                "SELECT next_not_after, next_ca_id, next_issued_at FROM device_certs "
                "WHERE device_id = ? AND next_serial = ?",
                (device_id, serial),
            ).fetchone()
            if renewed is None:
                return False
            db.execute(
                "UPDATE enrollments SET serial = ?, not_after = ? WHERE device_id = ?",
                (serial, renewed[0], device_id),
            )
            db.execute(
                """
                UPDATE device_certs SET ca_id = ?, issued_at = ?, next_serial = NULL,
                    next_not_after = NULL, next_ca_id = NULL, next_issued_at = NULL
                WHERE device_id = ?
                """,
                (renewed[1], renewed[2], device_id),
            )
        return True

    def adopt_certificate(
        self, device_id: str, school_id: str, serial: str, not_after: float, issued_at: float
    ) -> bool:
        with self._db.transaction() as db:
            # Checked again inside the transaction: two streams may race to adopt.
            newer = db.execute(
                f"SELECT 1 FROM ({_CERT_STATE}) WHERE device_id = ? AND issued_at >= ?",
                (device_id, issued_at),
            ).fetchone()
            if newer is not None:
                return False
            db.execute(
                """
                INSERT INTO enrollments (device_id, school_id, serial, not_after,
                                         enrolled_at, token_id)
                VALUES (?, ?, ?, ?, ?, 'restore')
                ON CONFLICT (device_id) DO UPDATE SET school_id = excluded.school_id,
                    serial = excluded.serial, not_after = excluded.not_after,
                    enrolled_at = excluded.enrolled_at, token_id = excluded.token_id,
                    reenroll = 0, revoked_at = NULL
                """,
                (device_id, school_id, serial, not_after, issued_at),
            )
            db.execute(
                """
                INSERT INTO device_certs (device_id, ca_id, issued_at) VALUES (?, '', ?)
                ON CONFLICT (device_id) DO UPDATE SET ca_id = '', issued_at = excluded.issued_at,
                    next_serial = NULL, next_not_after = NULL, next_ca_id = NULL,
                    next_issued_at = NULL
                """,
                (device_id, issued_at),
            )
        return True

    def add_enroll_token(self, token: EnrollToken, token_hash: bytes) -> None:
        self._db.write(
            "INSERT INTO enroll_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token.token_id,
                token_hash,
                token.school_id,
                token.uses_left,
                token.uses,
                token.expires_at,
                token.created_at,
                token.revoked_at,
            ),
        )

    def list_enroll_tokens(self, school_id: str | None) -> list[EnrollToken]:
        where = "WHERE school_id = :school" if school_id is not None else ""
        rows = self._db.read(
            f"SELECT * FROM enroll_tokens {where} ORDER BY created_at DESC, token_id",
            {"school": school_id},
        )
        return [_token(r) for r in rows]

    def revoke_enroll_token(self, token_id: str, now: float) -> EnrollToken | None:
        self._db.write(
            "UPDATE enroll_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
            (now, token_id),
        )
        return self.get_enroll_token(token_id)

    def get_enroll_token(self, token_id: str) -> EnrollToken | None:
        rows = self._db.read("SELECT * FROM enroll_tokens WHERE token_id = :id", {"id": token_id})
        return _token(rows[0]) if rows else None

    def find_enroll_token(self, token_hash: bytes) -> EnrollToken | None:
        rows = self._db.read("SELECT * FROM enroll_tokens WHERE token_hash = :h", {"h": token_hash})
        return _token(rows[0]) if rows else None

    def enroll(self, token_hash: bytes, enrollment: Enrollment, now: float) -> None:
        e = enrollment
        with self._db.write_lock:
            try:
                self._db.writer.execute("BEGIN IMMEDIATE")
                taken = self._db.writer.execute(
                    """
                    UPDATE enroll_tokens SET uses_left = uses_left - 1, uses = uses + 1
                    WHERE token_hash = ? AND revoked_at IS NULL AND uses_left > 0
                      AND expires_at > ?
                    """,
                    (token_hash, now),
                ).rowcount
                if not taken:
                    raise refusals.token_refused()
                enrolled = self._db.writer.execute(
                    "SELECT school_id, reenroll FROM enrollments WHERE device_id = ?",
                    (e.device_id,),
                ).fetchone()
                seen = self._db.writer.execute(
                    "SELECT school_id FROM devices WHERE device_id = ?", (e.device_id,)
                ).fetchone()
                refused = refusals.device_refusal(
                    e.device_id,
                    e.school_id,
                    enrolled[0] if enrolled else None,
                    bool(enrolled and enrolled[1]),
                    seen[0] if seen else None,
                )
                if refused is not None:
                    raise refused
                stored = self._db.writer.execute(
                    """
                    INSERT INTO enrollments VALUES (?, ?, ?, ?, ?, ?, 0, NULL)
                    ON CONFLICT (device_id) DO UPDATE SET school_id = excluded.school_id,
                        serial = excluded.serial, not_after = excluded.not_after,
                        enrolled_at = excluded.enrolled_at, token_id = excluded.token_id,
                        reenroll = 0, revoked_at = NULL
                    WHERE enrollments.reenroll = 1 AND enrollments.school_id = excluded.school_id
                    """,
                    (e.device_id, e.school_id, e.serial, e.not_after, e.enrolled_at, e.token_id),
                ).rowcount
                if not stored:
                    raise refusals.taken(e.device_id)
                # A renewal of the certificate this enrollment replaces is void with it.
                self._db.writer.execute(
                    "UPDATE device_certs SET next_serial = NULL, next_not_after = NULL, "
                    "next_ca_id = NULL, next_issued_at = NULL WHERE device_id = ?",
                    (e.device_id,),
                )
                self._db.writer.execute("COMMIT")
            except EnrollRefused:
                self._db.writer.execute("ROLLBACK")
                raise
            except sqlite3.Error as exc:
                if self._db.writer.in_transaction:
                    self._db.writer.execute("ROLLBACK")
                raise StoreError(f"database {self._db.path}: {exc}") from None

    def get_enrollment(self, device_id: str) -> Enrollment | None:
        rows = self._db.read("SELECT * FROM enrollments WHERE device_id = :id", {"id": device_id})
        if not rows:
            return None
        r = rows[0]
        return Enrollment(
            device_id=r["device_id"],
            school_id=r["school_id"],
            serial=r["serial"],
            not_after=r["not_after"],
            enrolled_at=r["enrolled_at"],
            token_id=r["token_id"],
            reenroll=bool(r["reenroll"]),
            revoked_at=r["revoked_at"],
        )

    def allow_reenroll(self, device_id: str) -> Enrollment | None:
        self._db.write("UPDATE enrollments SET reenroll = 1 WHERE device_id = ?", (device_id,))
        return self.get_enrollment(device_id)

    def decommission(self, device_id: str, now: float) -> Enrollment | None:
        # A device seen only on streams gets a revoked enrollment with no certificate.
        self._db.write(
            """
            INSERT INTO enrollments (device_id, school_id, serial, not_after, enrolled_at,
                                     token_id, revoked_at)
            SELECT device_id, school_id, '', 0, first_seen, '', ? FROM devices
            WHERE device_id = ?
            ON CONFLICT (device_id) DO UPDATE SET revoked_at = excluded.revoked_at
            WHERE enrollments.revoked_at IS NULL
            """,
            (now, device_id),
        )
        self._db.write(
            "UPDATE enrollments SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
            (now, device_id),
        )
        return self.get_enrollment(device_id)

    def move_device(self, device_id: str, to_school: str, now: float) -> DeviceMove | None:
        with self._db.write_lock:
            try:
                self._db.writer.execute("BEGIN IMMEDIATE")
                try:
                    moved = self._move(device_id, to_school, now)
                except HostsClaimed:
                    self._db.writer.execute("ROLLBACK")
                    raise
                self._db.writer.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.writer.in_transaction:
                    self._db.writer.execute("ROLLBACK")
                raise StoreError(f"database {self._db.path}: {exc}") from None
        return moved

    def _move(self, device_id: str, to_school: str, now: float) -> DeviceMove | None:
        """The move's statements, inside the caller's transaction."""
        run = self._db.writer.execute
        enrolled = run("SELECT school_id FROM enrollments WHERE device_id = ?", (device_id,))
        enrolled_row = enrolled.fetchone()
        seen = run("SELECT school_id FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        if enrolled_row is None and seen is None:
            return None
        from_school = str((enrolled_row or seen)[0])
        move = DeviceMove(device_id, from_school, to_school, enrolled_row is not None)
        if from_school == to_school:
            return move
        claim = run("SELECT rollout_id FROM rollout_claims WHERE device_id = ?", (device_id,))
        claimed = claim.fetchone()
        if claimed is not None:
            raise HostsClaimed({device_id: int(claimed[0])})
        # Its certificate names the old school: it is refused until it enrolls here.
        run(
            "UPDATE enrollments SET school_id = ?, reenroll = 1 WHERE device_id = ?",
            (to_school, device_id),
        )
        run(
            "UPDATE devices SET school_id = ?, room_id = '', labels = '{}' WHERE device_id = ?",
            (to_school, device_id),
        )
        run(
            "UPDATE outbox SET expires_at = MIN(expires_at, ?) "
            "WHERE device_id = ? AND done_at IS NULL",
            (now, device_id),
        )
        for table in ("device_reports", "device_wifi", "command_results"):
            run(f"DELETE FROM {table} WHERE device_id = ?", (device_id,))
        return move
