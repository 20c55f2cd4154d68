"""Certificate renewal on the devices' own streams, and the watch on the pki directory.

A stream opened with a client certificate is remembered with that certificate (its
serial, key and issuing CA). An agent with the "renew" capability is told after
Welcome whom to trust and when to renew (CertificateStatus); it answers, in time,
with a RenewRequest for a key it made, and gets a RenewResponse on the same stream.
The renewed certificate is kept as the device's next one; the first stream opened
with it makes it the certificate in use, and from then on the old one is refused
(controller/fleet/admission.py compares with the enrollment's serial). Until that moment
the old certificate still works, so a lost answer costs nothing: the device asks
again on its next stream.

Every renewal, granted or refused, is logged and audited (action "renew").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import grpc
from cryptography import x509

from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.ca_rotation import CaSet, ca_id, renew_server_cert_if_due
from controller.enroll.cert_store import CertStore, Renewed
from controller.enroll.device_certs import sign_device_key
from controller.enroll.pki import BACKDATE
from controller.enroll.renewal import renew_in, renewal_key, spki
from controller.errors import PkiError, StoreError
from controller.fleet.sessions import Closing, Session, SessionRegistry
from controller.people.audit import AuditSink
from inventory.people import AuditEntry, Outcome
from protos.schoolfleet.v1 import agent_pb2

log = logging.getLogger(__name__)

CAPABILITY = "renew"
# Renewal requests one stream may make, refused ones included: each is logged and
# audited, so a device that keeps asking is cut off and must connect again.
REQUESTS_PER_STREAM = 10
Sessions = SessionRegistry[agent_pb2.ControllerMessage]
StreamSession = Session[agent_pb2.ControllerMessage]


@dataclasses.dataclass
class StreamCert:
    """The client certificate a stream was opened with, as far as renewal needs it."""

    device_id: str
    school_id: str
    serial: str
    key: bytes
    # The trusted CA that signed it ("" if none of those now trusted: it is retiring).
    ca_id: str
    # When it was signed and when it ends (POSIX seconds), from the certificate itself.
    issued_at: float
    not_after: float
    renewed: bool = False
    requests: int = 0


class Renewals:
    """Answers renewal requests and tells agents about CA changes."""

    def __init__(
        self,
        keeper: CaKeeper,
        store: CertStore,
        audit: AuditSink,
        sessions: Sessions,
        *,
        lifetime: float,
        spread: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._keeper = keeper
        self._store = store
        self._audit = audit
        self._sessions = sessions
        self._lifetime = dt.timedelta(seconds=lifetime)
        self._spread = spread
        self._now = now
        # The last reason the server certificate could not be renewed, told once.
        self._server_problem = ""
        # Forgotten with the session: nothing to clean up when a stream ends.
        self._streams: weakref.WeakKeyDictionary[StreamSession, StreamCert] = (
            weakref.WeakKeyDictionary()
        )

    async def confirm(self, device_id: str, serial: str) -> bool:
        """Whether ``serial``, not the device's current certificate, is its renewed one:
        then it becomes the current one (the switch) and the stream may open. Asked
        only for a certificate admission would refuse, so a stream of the certificate
        in use costs no store work here."""
        try:
            confirmed = await asyncio.to_thread(self._store.confirm_renewal, device_id, serial)
        except StoreError as exc:
            log.error("renewed certificate not confirmed device=%s error=%s", device_id, exc)
            return False
        if confirmed:
            log.info("renewed certificate in use device=%s serial=%s", device_id, serial)
        return confirmed

    def opened(
        self, session: StreamSession, school_id: str, serial: str | None, context: Any
    ) -> None:
        """The stream is admitted: remember its certificate, tell the agent whom to
        trust and when to renew. Nothing without a client certificate (agent_tls off)."""
        if serial is None:
            return
        pem = next(iter(context.auth_context().get("x509_pem_cert", ())), b"")
        # gRPC verified it already: it parses.
        cert = x509.load_pem_x509_certificate(pem)
        stream = StreamCert(
            session.device_id,
            school_id,
            serial,
            spki(cert.public_key()),
            self._issuer(cert),
            (cert.not_valid_before_utc + BACKDATE).timestamp(),
            cert.not_valid_after_utc.timestamp(),
        )
        self._streams[session] = stream
        if CAPABILITY in session.capabilities:
            session.send(self._status(stream))

    def _issuer(self, cert: x509.Certificate) -> str:
        """The trusted CA whose key identifier the certificate names (TLS checked the
        signature); "" if none."""
        try:
            cas = self._keeper.cas()
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        except (PkiError, x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
            return ""
        for ca in cas.trusted:
            with contextlib.suppress(x509.ExtensionNotFound, ValueError):
                ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
                if ski.value.digest == aki.value.key_identifier:
                    return ca_id(ca)
        return ""

    def _status(self, cert: StreamCert) -> agent_pb2.ControllerMessage:
        cas = self._keeper.cas()
        return agent_pb2.ControllerMessage(
            certificate_status=agent_pb2.CertificateStatus(
                ca_bundle_pem=cas.bundle_pem(),
                renew_in_seconds=renew_in(
                    self._now(),
                    cert.issued_at,
                    cert.not_after,
                    device_id=cert.device_id,
                    rotation_started=_rotation_started(cas, cert.ca_id),
                    spread=self._spread,
                ),
            )
        )

    async def on_request(self, session: StreamSession, request: agent_pb2.RenewRequest) -> None:
        """Signs the device's new key, or says why not; the answer goes on its stream."""
        cert = self._streams.get(session)
        if cert is not None:
            cert.requests += 1
            if cert.requests > REQUESTS_PER_STREAM:
                log.warning(
                    "renewal requests over the limit device=%s requests=%d; stream closed",
                    session.device_id,
                    cert.requests,
                )
                session.close(
                    Closing(
                        "renewal_flood",
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"more than {REQUESTS_PER_STREAM} renewal requests on one stream",
                    )
                )
                return
        outcome, answer = Outcome.DENIED, agent_pb2.RenewResponse()
        if cert is None:
            answer.refused = "renewal needs a stream opened with a client certificate"
        elif cert.renewed:
            answer.refused = (
                "one renewal per stream: connect with the renewed certificate before asking again"
            )
        else:
            try:
                answer = await asyncio.to_thread(self._sign, cert, request.csr_pem)
                outcome = Outcome.OK if not answer.refused else Outcome.DENIED
            except StoreError as exc:
                log.error("renewal not stored device=%s error=%s", cert.device_id, exc)
                outcome, answer.refused = Outcome.FAILED, "controller store unavailable"
        device_id = session.device_id
        school_id = cert.school_id if cert is not None else ""
        serial = _serial_of(answer.certificate_pem) if outcome == Outcome.OK else ""
        if outcome == Outcome.OK:
            assert cert is not None
            cert.renewed = True
            log.info(
                "certificate renewed device=%s school=%s serial=%s replaces=%s",
                device_id,
                school_id,
                serial,
                cert.serial,
            )
        else:
            log.warning(
                "renewal refused device=%s school=%s reason=%s",
                device_id,
                school_id or "-",
                answer.refused,
            )
        await self._audit(
            AuditEntry(
                entry_id=0,
                at=self._now(),
                actor=device_id,
                action="renew",
                target=device_id,
                school_id=school_id,
                outcome=outcome,
                message=(f"certificate {serial}" if serial else answer.refused)[:500],
                peer="",
            )
        )
        session.send(agent_pb2.ControllerMessage(renew_response=answer))

    def _sign(self, cert: StreamCert, csr_pem: bytes) -> agent_pb2.RenewResponse:
        try:
            public = renewal_key(csr_pem, cert.device_id, cert.school_id, cert.key)
            cas = self._keeper.cas()
            when = dt.datetime.fromtimestamp(self._now(), dt.UTC)
            issued = sign_device_key(
                cas.issuing, public, cert.device_id, cert.school_id, self._lifetime, when
            )
        except PkiError as exc:
            return agent_pb2.RenewResponse(refused=str(exc))
        serial = f"{issued.serial:x}"
        renewed = Renewed(serial, issued.not_after.timestamp(), self._now(), cas.issuing_id)
        if not self._store.add_renewal(cert.device_id, cert.serial, renewed):
            return agent_pb2.RenewResponse(
                refused=f"certificate {cert.serial} is no longer this device's current one"
            )
        return agent_pb2.RenewResponse(certificate_pem=issued.pem, ca_bundle_pem=cas.bundle_pem())

    async def watch(self, interval: float) -> None:
        """Looks at the pki directory every ``interval`` seconds until cancelled; after a
        change, tells every agent, and closes streams whose CA is no longer trusted."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew_server_cert()
                if await asyncio.to_thread(self._keeper.refresh):
                    await self._announce()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The watch must outlive any one bad look; the next one tries again.
                log.exception("pki watch failed; trying again in %gs", interval)

    async def _renew_server_cert(self) -> None:
        try:
            renewed = await asyncio.to_thread(renew_server_cert_if_due, self._keeper.pki_dir)
        except PkiError as exc:
            # A lab without a CA has nothing to renew; any other problem is told once.
            if str(exc) != self._server_problem and self._keeper.loaded:
                log.warning("server certificate not renewed reason=%s", exc)
            self._server_problem = str(exc)
            return
        self._server_problem = ""
        if renewed is not None:
            log.info("server certificate renewed until=%s", renewed.not_valid_after_utc.isoformat())

    async def _announce(self) -> None:
        cas = self._keeper.cas()
        trusted = cas.trusted_ids()
        told = closed = 0
        for session, cert in list(self._streams.items()):
            if self._sessions.get(session.device_id) is not session:
                continue
            if cert.ca_id not in trusted:
                closed += 1
                session.close(
                    Closing(
                        "ca_retired",
                        grpc.StatusCode.UNAUTHENTICATED,
                        "the CA that signed this certificate is retired; the device must "
                        "enroll again",
                    )
                )
                continue
            if CAPABILITY in session.capabilities:
                session.send(self._status(cert))
                told += 1
        log.info(
            "pki change announced cas=%d next_ca=%s agents_told=%d streams_closed=%d",
            len(trusted),
            "yes" if cas.next is not None else "no",
            told,
            closed,
        )


def _rotation_started(cas: CaSet, cert_ca: str) -> float | None:
    """When the move to the next CA began, if this certificate is not from it yet."""
    if cas.next is None or cert_ca == cas.issuing_id:
        return None
    return (cas.next.certificate.not_valid_before_utc + BACKDATE).timestamp()


def _serial_of(pem: bytes) -> str:
    return f"{x509.load_pem_x509_certificate(pem).serial_number:x}"
