"""AgentService: the devices' streams.

Each Connect stream starts with Hello; the handler opens a session (replacing an
older stream of the same device), records the device, answers Welcome, and then
writes what the session queues (acks, commands) while a reader task hands the
device's heartbeats to the writer. A device that breaks the contract gets its
stream closed with a status and a log line; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
from cryptography import x509
from google.protobuf.message import DecodeError

from common.retry_hint import RetryWindow
from controller.api.convert import health_from_pb, identity_from_hello, report_from_pb
from controller.api.enroll import Enroller
from controller.api.lesson_convert import lesson_event_from_pb
from controller.api.renewal import Renewals
from controller.api.request_checks import decode
from controller.api.uplink_orders import uplink_answer
from controller.enroll.device_certs import identity_from_uris
from controller.enroll.restored import adopt, presented, read_mark
from controller.enroll.sql_store import SqlEnrollments
from controller.errors import PkiError, ProtocolError, StoreError
from controller.fleet.acks import Acks, SendAck
from controller.fleet.admission import (
    WelcomeRate,
    busy_window,
    drain_window,
    restart_spread,
    stream_refusal,
)
from controller.fleet.metrics import ControllerMetrics
from controller.fleet.sessions import Closing, Session, SessionRegistry
from controller.fleet.store import DeviceStore
from controller.fleet.writer import MessageWriter
from controller.proxied.addresses import peer_of
from controller.settings import ControllerSettings
from controller.store.rows import CommandResultRow, HeartbeatRow, LessonEventRow
from controller.uplink.checks import UplinkAnswer
from inventory.model import DeviceIdentity
from protos.schoolfleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2
from wire.mapping import seconds, timestamp

log = logging.getLogger(__name__)

ControllerMessage = agent_pb2.ControllerMessage
# Capabilities kept of a Hello; an agent names a handful.
_CAPABILITIES_MAX = 32
# At shutdown: streams told at a time, and at most how many may be ending at once
# (each ends in a few round trips through gRPC's completion queue: a window keeps
# them coming while the event loop stays responsive).
_TELL_BATCH = 256
_TELL_WINDOW = 1024
Sessions = SessionRegistry[agent_pb2.ControllerMessage]
_RESULT_STATUS = {
    agent_pb2.CommandResult.STATUS_OK: "ok",
    agent_pb2.CommandResult.STATUS_FAILED: "failed",
    agent_pb2.CommandResult.STATUS_UNSUPPORTED: "unsupported",
}


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """The controller's side of every device stream."""

    def __init__(
        self,
        settings: ControllerSettings,
        devices: DeviceStore,
        enrollments: SqlEnrollments,
        pending_commands: Callable[[str, float], list[bytes]],
        write_executor: ThreadPoolExecutor,
        sessions: Sessions,
        metrics: ControllerMetrics,
        enroller: Enroller,
        now: Callable[[], float] = time.time,
        *,
        renewals: Renewals,
        writer: MessageWriter,
        acks: Acks,
        on_uplink_answer: Callable[[UplinkAnswer], None],
        fleet_size: int = 0,
    ) -> None:
        self._settings = settings
        self._enroller = enroller
        # Certificate renewal on the stream and CA changes (controller/api/renewal.py).
        self._renewals = renewals
        self._devices = devices
        # Each stream's certificate is checked against the device's enrollment.
        self._enrollments = enrollments
        # The outbox (the lessons' store): commands that waited for the device.
        self._outbox = pending_commands
        self._write_executor = write_executor
        self._sessions = sessions
        self._metrics = metrics
        self._now = now
        # Devices the store knew at start: what a restart's return is spread over, as
        # each Welcome says (the streams open so far are fewer while a storm lasts).
        self._fleet_size = min(fleet_size, settings.max_streams)
        self._writer = writer
        self._acks = acks
        # Where answers to MeasureUplink go (the uplink checks), beside the store.
        self._on_uplink_answer = on_uplink_answer
        # Set in a data folder a backup was restored into (controller/enroll/restored.py).
        self._restore_mark = read_mark(settings.data_dir)
        # Connect handlers running, so that shutdown waits for them before it closes
        # the writer and the pools they use.
        self._running = 0
        self._opening = 0
        # How fast streams get their Welcome now: when a shed device should come back.
        self._welcomes = WelcomeRate()
        # Set during shutdown when a handler returns and no more than _wake_at run.
        self._handler_ended = asyncio.Event()
        self._wake_at = -1
        # Set at shutdown: new streams are refused with it, ends are recorded at once.
        self._stopping: Closing | None = None

    async def Enroll(
        self,
        request: agent_pb2.EnrollRequest,
        context: grpc.aio.ServicerContext[agent_pb2.EnrollRequest, agent_pb2.EnrollResponse],
    ) -> agent_pb2.EnrollResponse:
        return await self._enroller.enroll(request, context)

    async def stop_streams(self, closing: Closing, within: float) -> int:
        """Refuses new streams and ends the open ones with ``closing`` (at shutdown), for
        at most ``within`` seconds; returns how many were not told by then: the exit
        cuts those, and their devices come back over the spread their Welcome named.

        A batch at a time, with at most _TELL_WINDOW ending at once: thousands of
        handlers ending together would hold the event loop (~0.4 ms a stream in gRPC)
        well past the deadline. Their ends are not written one by one: the store marks
        every stream down in one statement at the end (controller/server.py)."""
        self._stopping = closing
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        untold = self._sessions.current()
        while untold and loop.time() < deadline:
            batch, untold = untold[:_TELL_BATCH], untold[_TELL_BATCH:]
            for session in batch:
                session.close(closing)
            await self._running_at_most(len(untold) + _TELL_WINDOW - _TELL_BATCH, deadline)
        if not untold:
            await self._running_at_most(0, deadline)
        return len(untold)

    async def _running_at_most(self, handlers: int, deadline: float) -> None:
        """Waits until no more than ``handlers`` Connect handlers run, or the loop time
        ``deadline`` passes."""
        loop = asyncio.get_running_loop()
        self._wake_at = handlers
        while self._running > handlers and (left := deadline - loop.time()) > 0:
            self._handler_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handler_ended.wait(), left)

    @property
    def running(self) -> int:
        """Connect handlers running now."""
        return self._running

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[agent_pb2.AgentMessage, agent_pb2.ControllerMessage],
    ) -> AsyncIterator[agent_pb2.ControllerMessage]:
        self._running += 1
        # Streams not yet welcomed: what a storm piles up (shed in _connect).
        self._opening += 1
        opening = True
        try:
            async for answer in self._connect(request_iterator, context):
                if opening:
                    opening = False
                    self._opening -= 1
                    self._welcomes.welcomed(time.monotonic())
                yield answer
        finally:
            if opening:
                self._opening -= 1
            self._running -= 1
            if self._running <= self._wake_at:
                self._handler_ended.set()

    async def _connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[agent_pb2.AgentMessage, agent_pb2.ControllerMessage],
    ) -> AsyncIterator[agent_pb2.ControllerMessage]:
        if self._stopping is not None:
            await _abort(context, self._stopping)
        peer = peer_of(context)
        hello = await self._hello(request_iterator, context, peer)
        if hello is None:
            return
        # Past OPENING_MAX the controller sheds, saying when to come back, before it
        # spends anything more. After the Hello: refused while the device is still
        # writing it, grpc's client would report INTERNAL and lose the hint.
        shed = busy_window(self._opening, self._welcomes.per_second(time.monotonic()))
        if shed is not None:
            self._metrics.streams_closed.labels("busy").inc()
            message = f"controller busy: {self._opening} streams opening; retry later"
            await _abort(context, Closing("busy", grpc.StatusCode.UNAVAILABLE, message, shed))
        identity, capabilities = hello
        serial = None
        if self._settings.agent_tls:
            identity, serial = await self._certified(identity, peer, context)
        await self._refuse_unless_current(identity, serial, peer, context)
        session = self._sessions.open(identity.device_id, capabilities)
        self._renewals.opened(session, identity.school_id, serial, context)
        if self._stopping is not None:
            # Opened while shutdown closed the others: it ends alike.
            session.close(self._stopping)
        self._acks.forget(identity.device_id)
        try:
            last_seq = await asyncio.get_running_loop().run_in_executor(
                self._write_executor,
                self._devices.device_connected,
                identity,
                session.stream_id,
                float(self._settings.offline_after),
                self._now(),
            )
        except StoreError as exc:
            self._sessions.release(session)
            log.error("stream refused device=%s peer=%s error=%s", identity.device_id, peer, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "controller store unavailable")
        log.info(
            "stream open device=%s school=%s kind=%s peer=%s address=%s stream=%d last_seq=%d",
            identity.device_id,
            identity.school_id,
            identity.kind,
            peer,
            identity.address or "-",
            session.stream_id,
            last_seq,
        )
        reader = asyncio.create_task(self._read(session, request_iterator))
        closing = Closing("cancelled")
        try:
            yield ControllerMessage(
                welcome=agent_pb2.Welcome(
                    heartbeat_interval_seconds=self._settings.heartbeat_interval,
                    offline_after_seconds=self._settings.offline_after,
                    server_time=timestamp(self._now()),
                    last_stored_seq=last_seq,
                    thresholds=_thresholds(self._settings),
                    full_report_interval_seconds=self._settings.full_report_interval,
                    content_hosts=self._settings.content_hosts,
                    reconnect_spread_ms=round(
                        restart_spread(max(len(self._sessions), self._fleet_size)) * 1000
                    ),
                )
            )
            # Commands that waited for the device, e.g. a lesson that started while it
            # was off; one the dispatcher also pushed just now is deduped by the agent.
            for command in await self._pending_commands(identity.device_id):
                yield ControllerMessage(command=command)
            while True:
                item = await session.next()
                if isinstance(item, Closing):
                    closing = item
                    break
                yield item
            if closing.code is not None:
                await _abort(context, closing)
        finally:
            reader.cancel()
            # Nothing it read may reach the writer after this handler ends: shutdown
            # closes the writer once every handler has.
            await asyncio.wait({reader})
            self._finish(session, peer, closing)

    async def _pending_commands(self, device_id: str) -> list[agent_pb2.Command]:
        try:
            pending = await asyncio.to_thread(self._outbox, device_id, self._now())
        except StoreError as exc:
            # The commands stay in the outbox for the next stream.
            log.error("pending commands not read device=%s error=%s", device_id, exc)
            return []
        return [agent_pb2.Command.FromString(data) for data in pending]

    async def _certified(
        self,
        claimed: DeviceIdentity,
        peer: str,
        context: grpc.aio.ServicerContext[agent_pb2.AgentMessage, agent_pb2.ControllerMessage],
    ) -> tuple[DeviceIdentity, str]:
        """The device and school its verified client certificate names, never the Hello's,
        and the certificate's serial number (hex)."""
        names = context.auth_context().get("x509_subject_alternative_name", [])
        try:
            device_id, school_id = identity_from_uris([n.decode(errors="replace") for n in names])
        except PkiError as exc:
            self._metrics.streams_closed.labels("unauthenticated").inc()
            log.warning("stream refused peer=%s code=UNAUTHENTICATED reason=%s", peer, exc)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate from this controller's CA is required",
            )
        if device_id != claimed.device_id:
            self._metrics.streams_closed.labels("unauthenticated").inc()
            message = f"the certificate is for device {device_id}, Hello says {claimed.device_id}"
            log.warning("stream refused peer=%s code=PERMISSION_DENIED reason=%s", peer, message)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        # gRPC verified this certificate already; it parses.
        pem = next(iter(context.auth_context().get("x509_pem_cert", ())), b"")
        serial = f"{x509.load_pem_x509_certificate(pem).serial_number:x}"
        return dataclasses.replace(claimed, school_id=school_id), serial

    async def _refuse_unless_current(
        self,
        identity: DeviceIdentity,
        serial: str | None,
        peer: str,
        context: grpc.aio.ServicerContext[agent_pb2.AgentMessage, agent_pb2.ControllerMessage],
    ) -> None:
        """Aborts the stream unless the device's enrollment stands behind its certificate
        (controller/fleet/admission.py): a certificate of a device never enrolled, of another
        school, of a decommissioned device, or one a later enrollment replaced (a copy
        of an old key, from a stolen disk say) is no way in."""
        device_id = identity.device_id
        try:
            # A read, so not queued behind the writer's batches: 08:00 opens many streams.
            enrolled = await asyncio.to_thread(self._enrollments.get_enrollment, device_id)
        except StoreError as exc:
            log.error("stream refused device=%s peer=%s error=%s", device_id, peer, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "controller store unavailable")
        cert_school = identity.school_id if serial is not None else None
        refusal = stream_refusal(device_id, cert_school, serial, enrolled)
        if refusal is None:
            return
        # The first stream with a renewed certificate makes it the one in use.
        if (
            serial is not None
            and refusal.reason == "replaced_certificate"
            and await self._renewals.confirm(device_id, serial)
        ):
            return
        if serial is not None and await self._adopted(identity, context):
            return
        self._metrics.streams_closed.labels(refusal.reason).inc()
        log.warning(
            "stream refused device=%s school=%s peer=%s reason=%s serial=%s current=%s",
            device_id,
            cert_school or "-",
            peer,
            refusal.reason,
            serial or "-",
            (enrolled.serial or "-") if enrolled else "-",
        )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal.message)

    async def _adopted(
        self,
        identity: DeviceIdentity,
        context: grpc.aio.ServicerContext[agent_pb2.AgentMessage, agent_pb2.ControllerMessage],
    ) -> bool:
        """Whether the certificate, unknown to a restored store, was issued between the
        backup and the restore and is now the device's (controller/enroll/restored.py)."""
        if self._restore_mark is None:
            return False
        pem = next(iter(context.auth_context().get("x509_pem_cert", ())), b"")
        cert = presented(pem, identity.device_id, identity.school_id)
        try:
            return await asyncio.to_thread(adopt, self._enrollments, self._restore_mark, cert)
        except StoreError as exc:
            log.error("certificate not adopted device=%s error=%s", identity.device_id, exc)
            return False

    async def _hello(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[agent_pb2.AgentMessage, agent_pb2.ControllerMessage],
        peer: str,
    ) -> tuple[DeviceIdentity, frozenset[str]] | None:
        """Reads and checks the stream's first message; aborts the stream if it is wrong.
        Returns the identity it claims and the capabilities it names."""
        try:
            first = await asyncio.wait_for(_next(request_iterator), self._settings.hello_timeout)
            if first is None:
                return None
            if first.WhichOneof("body") != "hello":
                raise ProtocolError("the first message on a stream must be Hello")
            capabilities = frozenset(first.hello.capabilities[:_CAPABILITIES_MAX])
            return identity_from_hello(first.hello, peer), capabilities
        except TimeoutError:
            # Late, not wrong: in a storm the controller itself may be why; the device
            # is told to come back later, spread out.
            rate = self._welcomes.per_second(time.monotonic())
            retry: RetryWindow | None = drain_window(self._opening, rate)
            code, message = (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                (f"no Hello within {self._settings.hello_timeout:g}s"),
            )
        except ProtocolError as exc:
            retry = None
            code, message = grpc.StatusCode[exc.status], str(exc)
        self._metrics.streams_closed.labels("protocol_error").inc()
        log.warning("stream refused peer=%s code=%s reason=%s", peer, code.name, message)
        await _abort(context, Closing("protocol_error", code, message, retry))
        raise AssertionError("abort returns only by raising")

    async def _read(
        self,
        session: Session[agent_pb2.ControllerMessage],
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
    ) -> None:
        """Hands the device's messages on until its stream ends or breaks the rules."""
        writer = self._writer
        device_id = session.device_id
        try:
            while (message := await _next(request_iterator)) is not None:
                body = message.WhichOneof("body")
                if body in ("heartbeat", "command_result", "lesson_event") and message.seq == 0:
                    raise ProtocolError(f"{body}: AgentMessage.seq must be above 0")
                if body == "heartbeat":
                    health = health_from_pb(message.heartbeat.health)
                    report = report_from_pb(message.heartbeat)
                    self._metrics.heartbeats_received.inc()
                    await writer.submit(
                        HeartbeatRow(device_id, message.seq, self._now(), health, report)
                    )
                elif body == "command_result":
                    await writer.submit(_result_row(device_id, message, self._now()))
                    answer = uplink_answer(device_id, message.command_result)
                    if answer is not None:
                        self._on_uplink_answer(answer)
                elif body == "lesson_event":
                    event = lesson_event_from_pb(device_id, message.lesson_event)
                    # Thousands arrive at a lesson's start: failures are the news.
                    log.log(
                        logging.WARNING if event.reason else logging.DEBUG,
                        "lesson event device=%s lesson=%s kind=%s reason=%s",
                        device_id,
                        event.lesson_id[:120],
                        event.kind,
                        event.reason or "-",
                    )
                    await writer.submit(LessonEventRow(device_id, message.seq, self._now(), event))
                elif body == "renew_request":
                    await self._renewals.on_request(session, message.renew_request)
                elif body == "hello":
                    raise ProtocolError("Hello may only be sent once per stream")
                else:
                    raise ProtocolError("AgentMessage without a body")
            session.close(Closing("agent_closed"))
        except ProtocolError as exc:
            session.close(Closing("protocol_error", grpc.StatusCode[exc.status], str(exc)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            session.close(
                Closing("read_error", grpc.StatusCode.INTERNAL, f"stream read failed: {exc}")
            )

    def _finish(
        self, session: Session[agent_pb2.ControllerMessage], peer: str, closing: Closing
    ) -> None:
        """Marks the device's stream down (unless a newer one took over) and logs why."""
        self._metrics.streams_closed.labels(closing.reason).inc()
        if self._sessions.release(session) and self._stopping is None:
            self._acks.forget(session.device_id)
            # Queued behind any batch already handed to the store, so order is kept;
            # not awaited, so a cancelled handler still records it.
            future = self._write_executor.submit(
                self._devices.device_disconnected, session.device_id, session.stream_id
            )
            future.add_done_callback(_log_failure)
        if closing is self._stopping:
            return  # thousands at once: shutdown logs their count in one line
        level = logging.WARNING if closing.code is not None else logging.INFO
        log.log(
            level,
            "stream closed device=%s peer=%s stream=%d reason=%s%s",
            session.device_id,
            peer,
            session.stream_id,
            closing.reason,
            f" code={closing.code.name} detail={closing.message}" if closing.code else "",
        )


async def _abort(
    context: grpc.aio.ServicerContext[agent_pb2.AgentMessage, agent_pb2.ControllerMessage],
    closing: Closing,
) -> None:
    """Ends the stream with the closing's status, and its retry hint as trailers."""
    assert closing.code is not None
    trailers = closing.retry.metadata() if closing.retry is not None else ()
    await context.abort(closing.code, closing.message, trailing_metadata=trailers)


def _thresholds(s: ControllerSettings) -> fleet_pb2.Thresholds:
    return fleet_pb2.Thresholds(
        disk_degraded_percent=s.disk_degraded_percent,
        disk_critical_percent=s.disk_critical_percent,
        memory_degraded_percent=s.memory_degraded_percent,
        temperature_degraded_celsius=s.temperature_degraded_celsius,
        temperature_critical_celsius=s.temperature_critical_celsius,
        battery_degraded_percent=s.battery_degraded_percent,
    )


def _result_row(device_id: str, message: agent_pb2.AgentMessage, now: float) -> CommandResultRow:
    result = message.command_result
    status = _RESULT_STATUS.get(result.status)
    if status is None:
        raise ProtocolError(f"CommandResult.status {result.status} is not a known status")
    log.info(
        "command result device=%s cmd=%s status=%s message=%s",
        device_id,
        result.command_id[:80],
        status,
        result.message[:200],
    )
    return CommandResultRow(
        device_id=device_id,
        seq=message.seq,
        received_at=now,
        command_id=result.command_id[:255],
        status=status,
        message=result.message[:2000],
        finished_at=seconds(result.finished_at),
    )


async def _next(messages: AsyncIterator[agent_pb2.AgentMessage]) -> agent_pb2.AgentMessage | None:
    """The next message, None at the end; bytes that do not parse are the device's error."""
    try:
        return await anext(messages, None)
    except DecodeError:
        raise ProtocolError("message is not a valid schoolfleet.v1.AgentMessage") from None


def ack_sender(sessions: Sessions) -> SendAck:
    """The fleet's acks put on device streams: an Ack to a device with a stream."""

    def send(device_id: str, seq: int) -> None:
        session = sessions.get(device_id)
        if session is not None:
            session.send(agent_pb2.ControllerMessage(ack=agent_pb2.Ack(seq=seq)))

    return send


def add_to_server(service: AgentService, server: grpc.aio.Server, max_bytes: int) -> None:
    """Registers the service like the generated helper, but with a size-checked decoder.

    gRPC's own receive limit would end an oversized stream as "cancelled" with no word
    of why; checking here lets the handler close it with a status and a log line.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Enroll": grpc.unary_unary_rpc_method_handler(
            service.Enroll,
            request_deserializer=agent_pb2.EnrollRequest.FromString,
            response_serializer=agent_pb2.EnrollResponse.SerializeToString,
        ),
        "Connect": grpc.stream_stream_rpc_method_handler(
            service.Connect,
            request_deserializer=lambda data: decode(data, max_bytes),
            response_serializer=agent_pb2.ControllerMessage.SerializeToString,
        ),
    }
    name = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


def _log_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("stream end not recorded: %s", exc)
