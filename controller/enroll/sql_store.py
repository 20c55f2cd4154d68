"""Enrollment tokens and device certificates, on either database.

Several controllers may share one PostgreSQL database, whose transactions run side by
side (READ COMMITTED) where SQLite's ran one at a time. So every change that reads
before it writes either says what it expects in the write itself (a token's use is
taken only while it has one left; an enrollment replaces another only while that one
is open to it), or locks the device's enrollment row (``for_update``) before it reads
the device's other rows: an enrollment, a renewal, its confirmation, an adoption and a
move of one device then run one after the other, each reading what the one before it
left. The token's row, where there is one, is taken before the enrollment's, so that
no two orders meet.
"""

from __future__ import annotations

from controller.enroll import tokens as refusals
from controller.enroll.cert_store import CertCounts, CertState, Renewed
from controller.enroll.sql_move import move_in
from controller.enroll.store import DeviceMove
from controller.enroll.stored_values import check_id, check_text, storable_id, storable_text
from controller.store.sql import Row, SqlDatabase, Tx
from inventory.model import Enrollment, EnrollToken

_ENROLL_TOKENS_COLUMNS = "token_id, school_id, uses_left, uses, expires_at, created_at, revoked_at"
_ENROLLMENT_COLUMNS = (
    "device_id, school_id, serial, not_after, enrolled_at, token_id, reenroll, revoked_at"
)


def _token(r: Row) -> EnrollToken:
    return EnrollToken(
        token_id=r["token_id"],
        school_id=r["school_id"],
        uses_left=r["uses_left"],
        uses=r["uses"],
        expires_at=r["expires_at"],
        created_at=r["created_at"],
        revoked_at=r["revoked_at"],
    )


def _enrollment(r: Row) -> Enrollment:
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


_CERT_STATE = """
    SELECT e.device_id, e.school_id, e.serial, e.not_after, e.revoked_at,
           COALESCE(c.issued_at, e.enrolled_at) AS issued_at, COALESCE(c.ca_id, '') AS ca_id,
           c.next_serial
    FROM enrollments e LEFT JOIN device_certs c ON c.device_id = e.device_id
"""


def _cert_state(r: Row) -> CertState:
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


def _check_enrollment(e: Enrollment) -> None:
    check_id("device id", e.device_id)
    check_id("school id", e.school_id)
    check_text("serial", e.serial)
    check_text("token id", e.token_id)


class SqlEnrollments:
    """An EnrollTokenStore and a CertStore: tokens kept as hashes, and each device's
    certificate with its renewals. Safe for several controllers on one database."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def _lock_enrollment(self, tx: Tx, device_id: str, columns: str = "device_id") -> Row | None:
        """The device's enrollment, locked until ``tx`` ends (None if it has none)."""
        row: Row | None = tx.execute(
            f"SELECT {columns} FROM enrollments WHERE device_id = ?{self._db.dialect.for_update}",
            (device_id,),
        ).fetchone()
        return row

    def cert_state(self, device_id: str) -> CertState | None:
        if not storable_id(device_id):
            return None
        rows = self._db.read(f"{_CERT_STATE} WHERE e.device_id = :id", {"id": device_id})
        return _cert_state(rows[0]) if rows else None

    def cert_states(self) -> list[CertState]:
        order = self._db.dialect.by_code_point("e.device_id")
        return [_cert_state(r) for r in self._db.read(f"{_CERT_STATE} ORDER BY {order}")]

    def cert_counts(self, issuing_ca_id: str, expiring_before: float) -> CertCounts:
        check_text("CA id", issuing_ca_id)
        rows = self._db.read(
            """
            SELECT COUNT(*) AS devices,
                   COUNT(*) FILTER (WHERE COALESCE(c.ca_id, '') <> :ca) AS on_other_ca,
                   COUNT(c.next_serial) AS renewal_pending,
                   COUNT(*) FILTER (WHERE e.not_after < :before) AS expiring
            FROM enrollments e LEFT JOIN device_certs c ON c.device_id = e.device_id
            WHERE e.revoked_at IS NULL
            """,
            {"ca": issuing_ca_id, "before": expiring_before},
        )
        r = rows[0]
        return CertCounts(
            devices=int(r["devices"]),
            on_other_ca=int(r["on_other_ca"]),
            renewal_pending=int(r["renewal_pending"]),
            expiring=int(r["expiring"]),
        )

    def record_issued(self, device_id: str, ca_id: str, issued_at: float) -> None:
        check_id("device id", device_id)
        check_text("CA id", ca_id)
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
        check_text("serial", r.serial)
        check_text("CA id", r.ca_id)
        if not (storable_id(device_id) and storable_text(current_serial)):
            return False
        with self._db.transaction() as tx:
            # Locked, so that an enrollment replacing this certificate meanwhile is
            # seen (PostgreSQL reads the row again once it is free): its renewal is void.
            current = tx.execute(
                "SELECT enrolled_at FROM enrollments WHERE device_id = ? AND serial = ? "
                f"AND revoked_at IS NULL{self._db.dialect.for_update}",
                (device_id, current_serial),
            ).fetchone()
            if current is None:
                return False
            # A device without a row keeps its enrollment's CA, unknown here ("").
            tx.execute(
                """
                INSERT INTO device_certs (device_id, ca_id, issued_at) VALUES (?, '', ?)
                ON CONFLICT (device_id) DO NOTHING
                """,
                (device_id, current["enrolled_at"]),
            )
            tx.execute(
                """
                UPDATE device_certs SET next_serial = ?, next_not_after = ?, next_ca_id = ?,
                    next_issued_at = ? WHERE device_id = ?
                """,
                (r.serial, r.not_after, r.ca_id, r.issued_at, device_id),
            )
        return True

    def confirm_renewal(self, device_id: str, serial: str) -> bool:
        if not (storable_id(device_id) and storable_text(serial)):
            return False
        with self._db.transaction() as tx:
            # Two streams of one device confirming at once: the second reads the
            # renewal gone once the first's lock is released.
            if self._lock_enrollment(tx, device_id) is None:
                return False
            renewed = tx.execute(
                "SELECT next_not_after, next_ca_id, next_issued_at FROM device_certs "
                "WHERE device_id = ? AND next_serial = ?",
                (device_id, serial),
            ).fetchone()
            if renewed is None:
                return False
            tx.execute(
                "UPDATE enrollments SET serial = ?, not_after = ? WHERE device_id = ?",
                (serial, renewed["next_not_after"], device_id),
            )
            tx.execute(
                """
                UPDATE device_certs SET ca_id = ?, issued_at = ?, next_serial = NULL,
                    next_not_after = NULL, next_ca_id = NULL, next_issued_at = NULL
                WHERE device_id = ?
                """,
                (renewed["next_ca_id"], renewed["next_issued_at"], device_id),
            )
        return True

    def adopt_certificate(
        self, device_id: str, school_id: str, serial: str, not_after: float, issued_at: float
    ) -> bool:
        check_id("device id", device_id)
        check_id("school id", school_id)
        check_text("serial", serial)
        values = (device_id, school_id, serial, not_after, issued_at)
        with self._db.transaction() as tx:
            # A device the store has no enrollment for takes the adopted one; of two
            # streams racing to adopt, the second waits here and then finds it.
            created = tx.execute(
                """
                INSERT INTO enrollments (device_id, school_id, serial, not_after,
                                         enrolled_at, token_id)
                VALUES (?, ?, ?, ?, ?, 'restore') ON CONFLICT (device_id) DO NOTHING
                """,
                values,
            ).rowcount
            if not created:
                self._lock_enrollment(tx, device_id)
                newer = tx.execute(
                    f"SELECT 1 AS newer FROM ({_CERT_STATE}) AS s "
                    "WHERE device_id = ? AND issued_at >= ?",
                    (device_id, issued_at),
                ).fetchone()
                if newer is not None:
                    return False
                tx.execute(
                    """
                    UPDATE enrollments SET school_id = ?, serial = ?, not_after = ?,
                        enrolled_at = ?, token_id = 'restore', reenroll = 0, revoked_at = NULL
                    WHERE device_id = ?
                    """,
                    (school_id, serial, not_after, issued_at, device_id),
                )
            tx.execute(
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
        check_id("token id", token.token_id)
        check_id("school id", token.school_id)
        self._db.write(
            f"INSERT INTO enroll_tokens ({_ENROLL_TOKENS_COLUMNS}, token_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token.token_id,
                token.school_id,
                token.uses_left,
                token.uses,
                token.expires_at,
                token.created_at,
                token.revoked_at,
                token_hash,
            ),
        )

    def list_enroll_tokens(self, school_id: str | None) -> list[EnrollToken]:
        if school_id is not None and not storable_id(school_id):
            return []
        where = "WHERE school_id = :school" if school_id is not None else ""
        order = self._db.dialect.by_code_point("token_id")
        rows = self._db.read(
            f"SELECT {_ENROLL_TOKENS_COLUMNS} FROM enroll_tokens {where} "
            f"ORDER BY created_at DESC, {order}",
            {"school": school_id} if school_id is not None else {},
        )
        return [_token(r) for r in rows]

    def revoke_enroll_token(self, token_id: str, now: float) -> EnrollToken | None:
        if not storable_id(token_id):
            return None
        self._db.write(
            "UPDATE enroll_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
            (now, token_id),
        )
        return self.get_enroll_token(token_id)

    def get_enroll_token(self, token_id: str) -> EnrollToken | None:
        if not storable_id(token_id):
            return None
        rows = self._db.read(
            f"SELECT {_ENROLL_TOKENS_COLUMNS} FROM enroll_tokens WHERE token_id = :id",
            {"id": token_id},
        )
        return _token(rows[0]) if rows else None

    def find_enroll_token(self, token_hash: bytes) -> EnrollToken | None:
        rows = self._db.read(
            f"SELECT {_ENROLL_TOKENS_COLUMNS} FROM enroll_tokens WHERE token_hash = :h",
            {"h": token_hash},
        )
        return _token(rows[0]) if rows else None

    def enroll(self, token_hash: bytes, enrollment: Enrollment, now: float) -> None:
        e = enrollment
        _check_enrollment(e)
        with self._db.transaction() as tx:
            # Taken only while one is left: a concurrent enrollment holding the row
            # makes this one wait and then read its count, so N uses enroll N devices.
            taken = tx.execute(
                """
                UPDATE enroll_tokens SET uses_left = uses_left - 1, uses = uses + 1
                WHERE token_hash = ? AND revoked_at IS NULL AND uses_left > 0
                  AND expires_at > ?
                """,
                (token_hash, now),
            ).rowcount
            if not taken:
                raise refusals.token_refused()
            enrolled = self._lock_enrollment(tx, e.device_id, "school_id, reenroll")
            seen = tx.execute(
                "SELECT school_id FROM devices WHERE device_id = ?", (e.device_id,)
            ).fetchone()
            refused = refusals.device_refusal(
                e.device_id,
                e.school_id,
                enrolled["school_id"] if enrolled else None,
                bool(enrolled and enrolled["reenroll"]),
                seen["school_id"] if seen else None,
            )
            if refused is not None:
                raise refused
            # The condition again in the write: a device no row was there to lock for
            # may have been enrolled by another controller since (its insert waited).
            stored = tx.execute(
                f"""
                INSERT INTO enrollments ({_ENROLLMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, NULL)
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
            tx.execute(
                "UPDATE device_certs SET next_serial = NULL, next_not_after = NULL, "
                "next_ca_id = NULL, next_issued_at = NULL WHERE device_id = ?",
                (e.device_id,),
            )

    def get_enrollment(self, device_id: str) -> Enrollment | None:
        if not storable_id(device_id):
            return None
        rows = self._db.read(
            f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollments WHERE device_id = :id",
            {"id": device_id},
        )
        return _enrollment(rows[0]) if rows else None

    def allow_reenroll(self, device_id: str) -> Enrollment | None:
        if not storable_id(device_id):
            return None
        self._db.write("UPDATE enrollments SET reenroll = 1 WHERE device_id = ?", (device_id,))
        return self.get_enrollment(device_id)

    def decommission(self, device_id: str, now: float) -> Enrollment | None:
        if not storable_id(device_id):
            return None
        with self._db.transaction() as tx:
            # A device seen only on streams gets a revoked enrollment with no certificate.
            tx.execute(
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
            tx.execute(
                "UPDATE enrollments SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                (now, device_id),
            )
        return self.get_enrollment(device_id)

    def move_device(self, device_id: str, to_school: str, now: float) -> DeviceMove | None:
        check_id("school id", to_school)
        if not storable_id(device_id):
            return None
        with self._db.transaction() as tx:
            return move_in(tx, self._db.dialect, device_id, to_school, now)
