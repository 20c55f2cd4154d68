"""Enroll: a device trades an enrollment token and a certificate request for its
certificate, signed by the controller's CA for the token's school.

A source that keeps failing is answered RESOURCE_EXHAUSTED before any work
(controller/people/refusals.py); every attempt, granted or refused, is logged and audited
with the token's id once the token is known to be usable. The rules a token and a
device id must keep are controller/enroll/tokens.py's; the store checks them again in
the transaction that takes the token's use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Protocol

import grpc

from common.secret_hash import hash_secret
from controller.enroll import tokens as enrollment
from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.ca_rotation import CaSet
from controller.enroll.device_certs import DEVICE_DAYS, sign_device_csr
from controller.errors import EnrollRefused, PkiError, ProtocolError, StoreError
from controller.people.audit import AuditSink
from controller.people.refusals import Refusals
from inventory.model import DeviceRecord, Enrollment, EnrollToken, valid_id
from inventory.people import AuditEntry, Outcome
from protos.schoolfleet.v1 import agent_pb2

log = logging.getLogger(__name__)

# Characters of a client's text (a device id it sent) kept in logs and the audit.
_CLIENT_TEXT_MAX = 80
Context = grpc.aio.ServicerContext[agent_pb2.EnrollRequest, agent_pb2.EnrollResponse]


class EnrollStore(Protocol):
    """What enrollment reads and writes of the store."""

    def find_enroll_token(self, token_hash: bytes) -> EnrollToken | None: ...

    def get_enrollment(self, device_id: str) -> Enrollment | None: ...

    def enroll(self, token_hash: bytes, enrollment: Enrollment, now: float) -> None: ...

    def record_issued(self, device_id: str, ca_id: str, issued_at: float) -> None: ...


@dataclasses.dataclass
class _Attempt:
    """Who an enrollment came as, for its log line and audit entry: the token's id and
    school once the token is known to be usable, "-" and "" before."""

    actor: str = "-"
    school_id: str = ""


class _NoCa(Exception):
    """The controller has no usable CA (not initialised, or its files are wrong)."""


class Enroller:
    """AgentService's Enroll: checks, signs, records, audits."""

    def __init__(
        self,
        keeper: CaKeeper,
        store: EnrollStore,
        device_of: Callable[[str, float], DeviceRecord | None],
        audit: AuditSink,
        refusals: Refusals | None = None,
        now: Callable[[], float] = time.time,
        lifetime: float = DEVICE_DAYS * 86_400.0,
    ) -> None:
        # The CAs as last read from disk: `ca add-next` takes effect without a restart.
        self._keeper = keeper
        self._lifetime = dt.timedelta(seconds=lifetime)
        self._store = store
        # The registry's record of a device (the fleet's store).
        self._device_of = device_of
        # Where every enrollment, granted or refused, is recorded (the audit log).
        self._audit = audit
        # Sources that keep failing to enroll are refused before any work.
        self._refusals = refusals
        self._now = now

    async def enroll(
        self, request: agent_pb2.EnrollRequest, context: Context
    ) -> agent_pb2.EnrollResponse:
        peer = context.peer()
        busy = await self._refusals.busy(peer, "enroll") if self._refusals is not None else None
        if busy is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
        attempt = _Attempt()
        outcome = Outcome.FAILED
        try:
            # Off the loop, and off the heartbeat writer's thread: a morning of first
            # enrollments must not delay batches. The store's writes take its lock.
            cert, ca_cert, serial = await asyncio.to_thread(self._sign, request, attempt)
        except EnrollRefused as exc:
            code, message, outcome = grpc.StatusCode[exc.status], str(exc), Outcome.DENIED
        except ProtocolError as exc:
            code, message = grpc.StatusCode[exc.status], str(exc)
        except PkiError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except _NoCa as exc:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
        except StoreError as exc:
            log.error("enrollment not stored peer=%s error=%s", peer, exc)
            code, message = grpc.StatusCode.UNAVAILABLE, "controller store unavailable"
        else:
            log.info(
                "device enrolled device=%s school=%s token=%s serial=%s peer=%s",
                request.device_id,
                attempt.school_id,
                attempt.actor,
                serial,
                peer,
            )
            await self._record(request, attempt, Outcome.OK, f"certificate {serial}", peer)
            return agent_pb2.EnrollResponse(certificate_pem=cert, ca_certificate_pem=ca_cert)
        log.warning(
            "enrollment refused device=%s school=%s token=%s peer=%s code=%s reason=%s",
            _client_id(request.device_id),
            attempt.school_id or "-",
            attempt.actor,
            peer,
            code.name,
            message,
        )
        await self._record(request, attempt, outcome, message, peer)
        await context.abort(code, message)
        raise AssertionError("abort returns only by raising")

    async def _record(
        self,
        request: agent_pb2.EnrollRequest,
        attempt: _Attempt,
        outcome: Outcome,
        message: str,
        peer: str,
    ) -> None:
        await self._audit(
            AuditEntry(
                entry_id=0,
                at=self._now(),
                actor=attempt.actor,
                action="enroll",
                target=_client_id(request.device_id),
                school_id=attempt.school_id,
                outcome=outcome,
                message=message[:500],
                peer=peer[:100],
            )
        )

    def _sign(
        self, request: agent_pb2.EnrollRequest, attempt: _Attempt
    ) -> tuple[bytes, bytes, str]:
        """Checks the token and the device, signs the request, records both at once.
        Fills in ``attempt`` with the token's id and school once the token is usable."""
        if not valid_id(request.device_id):
            raise ProtocolError(
                f"device id {request.device_id[:_CLIENT_TEXT_MAX]!r} is not a valid id"
            )
        token_hash = hash_secret(request.token)
        token = self._store.find_enroll_token(token_hash)
        now = self._now()
        # Checked here so that nothing is signed for nothing; the store checks all of
        # it again in the transaction that takes the token's use.
        if token is None or not token.usable(now):
            raise enrollment.token_refused()
        attempt.actor, attempt.school_id = token.token_id, token.school_id
        existing = self._store.get_enrollment(request.device_id)
        seen = None
        if existing is None:
            device = self._device_of(request.device_id, now)
            seen = device.identity.school_id if device is not None else None
        refused = enrollment.device_refusal(
            request.device_id,
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
            request.csr_pem,
            request.device_id,
            token.school_id,
            lifetime=self._lifetime,
            now=dt.datetime.fromtimestamp(now, dt.UTC),
        )
        serial = f"{issued.serial:x}"
        self._store.enroll(
            token_hash,
            Enrollment(
                device_id=request.device_id,
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
        self._store.record_issued(request.device_id, cas.issuing_id, now)
        # The whole bundle: the device trusts a next CA before the controller uses it.
        return issued.pem, cas.bundle_pem(), serial

    def _certificate_authorities(self) -> CaSet:
        try:
            return self._keeper.cas()
        except PkiError as exc:
            raise _NoCa(f"the controller cannot sign certificates: {exc}") from None


def _client_id(device_id: str) -> str:
    """A device id a client sent, fit for a log line or the audit: as it is when valid,
    otherwise quoted (escaped) and cut short."""
    return device_id if valid_id(device_id) else repr(device_id[:_CLIENT_TEXT_MAX])
