"""Device certificates issued between a backup and its restore.

A restored store knows each device's certificate as it was when the backup was taken.
A device that enrolled, enrolled again or renewed its certificate after that holds a
certificate the restored store has never seen, signed by the same CA (its key is in
the backup), and admission (controller/fleet/admission.py) would refuse it. Only this
controller signs with that CA, so such a certificate records a decision the controller
made after the backup: it is adopted as the device's current one when it was issued
after the backup was taken, before the restore, and later than the certificate the
store has for the device. A certificate issued after the restore is in the store
already; an older one than the store's is never taken back.

What a restore cannot bring back: a decommission, a re-enrollment's revocation of an
older certificate, or a token's uses made after the backup (docs/operations.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from controller.enroll.cert_store import CertState
from controller.enroll.pki import BACKDATE

log = logging.getLogger(__name__)

RESTORED_MARK = "restored.json"
# Certificate times are whole seconds.
_SLACK = 1.0


@dataclass(frozen=True, slots=True)
class RestoreMark:
    """When the restored backup was taken, and when it was restored."""

    backup_taken_at: float
    restored_at: float


@dataclass(frozen=True, slots=True)
class Presented:
    """The verified client certificate a device opened its stream with."""

    device_id: str
    school_id: str
    serial: str
    # When the CA signed it (its notBefore is backdated by pki.BACKDATE).
    issued_at: float
    not_after: float


class AdoptionStore(Protocol):
    """What adoption reads and writes of the store."""

    def cert_state(self, device_id: str) -> CertState | None: ...

    def adopt_certificate(
        self,
        device_id: str,
        school_id: str,
        serial: str,
        not_after: float,
        issued_at: float,
    ) -> bool:
        """Makes the certificate the device's current one, enrolled in ``school_id``
        (decommission and re-enrollment marks cleared, its CA unknown: ""), unless the
        store has one issued at ``issued_at`` or later; whether it did."""
        ...


def read_mark(data_dir: Path) -> RestoreMark | None:
    """The data folder's restore mark (written by controller/backup/restore.py), if any."""
    path = data_dir / RESTORED_MARK
    try:
        body = json.loads(path.read_text())
        return RestoreMark(float(body["backup_taken_at"]), float(body["restored_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Without it the controller is as strict as ever: devices enrolled since the
        # backup are refused until they enroll again.
        log.error("restore mark not read path=%s error=%s", path, exc)
        return None


def adoptable(mark: RestoreMark, presented: Presented, current: CertState | None) -> bool:
    """Whether ``presented`` was issued between the backup and the restore, and after
    the certificate the store has for the device (``current``)."""
    issued = presented.issued_at
    if not mark.backup_taken_at - _SLACK < issued <= mark.restored_at + _SLACK:
        return False
    return current is None or issued > current.issued_at + _SLACK


def presented(pem: bytes, device_id: str, school_id: str) -> Presented:
    """What adoption needs of a certificate gRPC verified already."""
    cert = x509.load_pem_x509_certificate(pem)
    return Presented(
        device_id=device_id,
        school_id=school_id,
        serial=f"{cert.serial_number:x}",
        issued_at=(cert.not_valid_before_utc + BACKDATE).timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def adopt(store: AdoptionStore, mark: RestoreMark, cert: Presented) -> bool:
    """Adopts ``cert`` if it is adoptable (reads and writes the store); whether it did."""
    current = store.cert_state(cert.device_id)
    if not adoptable(mark, cert, current):
        return False
    if not store.adopt_certificate(
        cert.device_id, cert.school_id, cert.serial, cert.not_after, cert.issued_at
    ):
        return False
    log.warning(
        "certificate adopted after a restore device=%s school=%s serial=%s replaced=%s",
        cert.device_id,
        cert.school_id,
        cert.serial,
        current.serial if current is not None else "-",
    )
    return True
