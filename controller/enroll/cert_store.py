"""What certificate renewal and CA rotation read and write of the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CertState:
    """A device's certificate as the store knows it: the one in use, and a renewed one
    the device has not connected with yet."""

    device_id: str
    school_id: str
    # Hex; the certificate in use (enrollments.serial).
    serial: str
    not_after: float
    # When the certificate in use was signed, and by which CA (ca_rotation.ca_id);
    # "" for certificates signed before the controller kept track.
    issued_at: float
    ca_id: str
    next_serial: str | None = None
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Renewed:
    """A certificate signed for a renewal, waiting for the device to use it."""

    serial: str
    not_after: float
    issued_at: float
    ca_id: str


@dataclass(frozen=True, slots=True)
class CertCounts:
    """Enrolled devices (not decommissioned) by their certificates, for /metrics."""

    devices: int
    # Whose certificate in use another CA than the signing one signed (or one the
    # store does not know: signed before it kept track).
    on_other_ca: int
    renewal_pending: int
    # Whose certificate in use ends before the moment asked about.
    expiring: int


class CertStore(Protocol):
    """Device certificates beyond their enrollment: renewals and their CAs."""

    def cert_state(self, device_id: str) -> CertState | None: ...

    def cert_states(self) -> list[CertState]:
        """Every enrolled device's, decommissioned ones included (``revoked``)."""
        ...

    def cert_counts(self, issuing_ca_id: str, expiring_before: float) -> CertCounts:
        """How many devices are where, counted in the store (one query)."""
        ...

    def record_issued(self, device_id: str, ca_id: str, issued_at: float) -> None:
        """An enrollment's certificate was signed by ``ca_id``; any renewal is forgotten."""
        ...

    def add_renewal(self, device_id: str, current_serial: str, renewed: Renewed) -> bool:
        """Keeps ``renewed`` as the device's next certificate, if ``current_serial`` is
        still its certificate in use and it is not decommissioned; says whether it did."""
        ...

    def confirm_renewal(self, device_id: str, serial: str) -> bool:
        """The device connected with its renewed certificate ``serial``: it becomes the
        one in use and the old one is no longer accepted. Whether it was the next one."""
        ...

    def adopt_certificate(
        self, device_id: str, school_id: str, serial: str, not_after: float, issued_at: float
    ) -> bool:
        """After a restore (controller/enroll/restored.py): makes a certificate the store never
        saw the device's current one, enrolled in ``school_id`` (decommission and
        re-enrollment marks cleared, its CA unknown: ""), unless the store has one issued
        at ``issued_at`` or later. Whether it did."""
        ...
