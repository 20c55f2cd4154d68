"""Enroll on the wire: a device trades an enrollment token and a certificate request
for its certificate (controller/enroll/enrolling.py decides and signs).

A source that keeps failing is answered RESOURCE_EXHAUSTED before any work
(controller/people/refusals.py); every attempt, granted or refused, is logged and audited
with the token's id once the token is known to be usable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.device_certs import DEVICE_DAYS
from controller.enroll.enrolling import (
    CLIENT_TEXT_MAX,
    Attempt,
    EnrollAsk,
    Enrollments,
    EnrollStore,
    NoCa,
)
from controller.errors import EnrollRefused, PkiError, ProtocolError, StoreError
from controller.people.audit import AuditSink
from controller.people.refusals import Refusals
from controller.proxied.addresses import peer_of
from inventory.model import DeviceRecord, valid_id
from inventory.people import AuditEntry, Outcome
from protos.schoolfleet.v1 import agent_pb2

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[agent_pb2.EnrollRequest, agent_pb2.EnrollResponse]


class Enroller:
    """AgentService's Enroll: refuses a failing source early, answers, logs and audits
    each outcome of the enrollment (Enrollments)."""

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
        self._enrollments = Enrollments(keeper, store, device_of, lifetime)
        # Where every enrollment, granted or refused, is recorded (the audit log).
        self._audit = audit
        # Sources that keep failing to enroll are refused before any work.
        self._refusals = refusals
        self._now = now

    async def enroll(
        self, request: agent_pb2.EnrollRequest, context: Context
    ) -> agent_pb2.EnrollResponse:
        peer = peer_of(context)
        busy = await self._refusals.busy(peer, "enroll") if self._refusals is not None else None
        if busy is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
        attempt = Attempt()
        outcome = Outcome.FAILED
        try:
            # Off the loop, and off the heartbeat writer's thread: a morning of first
            # enrollments must not delay batches. The store's writes take its lock.
            ask = EnrollAsk(request.device_id, request.token, request.csr_pem)
            issued = await asyncio.to_thread(self._enrollments.enroll, ask, attempt, self._now())
        except EnrollRefused as exc:
            code, message, outcome = grpc.StatusCode[exc.status], str(exc), Outcome.DENIED
        except ProtocolError as exc:
            code, message = grpc.StatusCode[exc.status], str(exc)
        except PkiError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except NoCa as exc:
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
                issued.serial,
                peer,
            )
            await self._record(request, attempt, Outcome.OK, f"certificate {issued.serial}", peer)
            return agent_pb2.EnrollResponse(
                certificate_pem=issued.certificate_pem, ca_certificate_pem=issued.ca_bundle_pem
            )
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
        attempt: Attempt,
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


def _client_id(device_id: str) -> str:
    """A device id a client sent, fit for a log line or the audit: as it is when valid,
    otherwise quoted (escaped) and cut short."""
    return device_id if valid_id(device_id) else repr(device_id[:CLIENT_TEXT_MAX])
