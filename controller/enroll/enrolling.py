"""A device's enrollment: a token and a certificate request traded for a certificate
signed by the controller's CA for the token's school, recorded with the token's use.

Values in, values out, no gRPC; blocking (the store, the signature): the api edge runs
it off the event loop and answers, logs and audits each outcome. The rules a token and
a device id must keep are controller/enroll/tokens.py's; the store checks them again in
the transaction that takes the token's use.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Protocol

from common.secret_hash import hash_secret
from controller.enroll import tokens
from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.ca_rotation import CaSet
from controller.enroll.device_certs import DEVICE_DAYS, sign_device_csr
from controller.errors import PkiError, ProtocolError, SchoolFleetError
from inventory.model import DeviceRecord, Enrollment, EnrollToken, valid_id

# Characters of a client's text (a device id it sent) kept in errors, logs and the audit.
CLIENT_TEXT_MAX = 80


class EnrollStore(Protocol):
    """What enrollment reads and writes of the store."""

    def find_enroll_token(self, token_hash: bytes) -> EnrollToken | None: ...

    def get_enrollment(self, device_id: str) -> Enrollment | None: ...

    def enroll(self, token_hash: bytes, enrollment: Enrollment, now: float) -> None: ...

    def record_issued(self, device_id: str, ca_id: str, issued_at: float) -> None: ...


class NoCa(SchoolFleetError):
    """The controller has no usable CA (not initialised, or its files are wrong)."""


@dataclasses.dataclass(frozen=True, slots=True)
class EnrollAsk:
    """What a device sends to enroll."""

    device_id: str
    token: str
    csr_pem: bytes


@dataclasses.dataclass
class Attempt:
    """Who an enrollment came as, for its log line and audit entry: the token's id and
    school once the token is known to be usable, "-" and "" before."""

    actor: str = "-"
    school_id: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    """A device's certificate, the CA bundle it is to trust, the certificate's serial."""

    certificate_pem: bytes
    ca_bundle_pem: bytes
    serial: str


class Enrollments:
    """Checks a token and a device, signs the request, records both at once."""

    def __init__(
        self,
        keeper: CaKeeper,
        store: EnrollStore,
        device_of: Callable[[str, float], DeviceRecord | None],
        lifetime: float = DEVICE_DAYS * 86_400.0,
    ) -> None:
        # The CAs as last read from disk: `ca add-next` takes effect without a restart.
        self._keeper = keeper
        self._store = store
        # The registry's record of a device (the fleet's store).
        self._device_of = device_of
        self._lifetime = dt.timedelta(seconds=lifetime)

    def enroll(self, ask: EnrollAsk, attempt: Attempt, now: float) -> Issued:
        """The device's certificate; EnrollRefused, ProtocolError, PkiError, NoCa or
        StoreError otherwise. Fills in ``attempt`` once the token is known usable."""
        if not valid_id(ask.device_id):
            raise ProtocolError(f"device id {ask.device_id[:CLIENT_TEXT_MAX]!r} is not a valid id")
        token_hash = hash_secret(ask.token)
        token = self._store.find_enroll_token(token_hash)
        # Checked here so that nothing is signed for nothing; the store checks all of
        # it again in the transaction that takes the token's use.
        if token is None or not token.usable(now):
            raise tokens.token_refused()
        attempt.actor, attempt.school_id = token.token_id, token.school_id
        existing = self._store.get_enrollment(ask.device_id)
        seen = None
        if existing is None:
            device = self._device_of(ask.device_id, now)
            seen = device.identity.school_id if device is not None else None
        refused = tokens.device_refusal(
            ask.device_id,
            token.school_id,
            existing.school_id if existing else None,
            existing is not None and existing.reenroll,
            seen,
        )
        if refused is not None:
            raise refused
        cas = self._certificate_authorities()
        issued = sign_device_csr(
            cas.issuing,
            ask.csr_pem,
            ask.device_id,
            token.school_id,
            lifetime=self._lifetime,
            now=dt.datetime.fromtimestamp(now, dt.UTC),
        )
        serial = f"{issued.serial:x}"
        self._store.enroll(
            token_hash,
            Enrollment(
                device_id=ask.device_id,
                school_id=token.school_id,
                serial=serial,
                not_after=issued.not_after.timestamp(),
                enrolled_at=now,
                token_id=token.token_id,
            ),
            now,
        )
        # After the enrollment: a failure here leaves the device counted on an unknown
        # CA, so it is moved onto the newest one at its first renewal, no harm done.
        self._store.record_issued(ask.device_id, cas.issuing_id, now)
        # The whole bundle: the device trusts a next CA before the controller uses it.
        return Issued(issued.pem, cas.bundle_pem(), serial)

    def _certificate_authorities(self) -> CaSet:
        try:
            return self._keeper.cas()
        except PkiError as exc:
            raise NoCa(f"the controller cannot sign certificates: {exc}") from None
