"""The device's stream to the controller: Hello, heartbeats, acks, commands.

Everything the agent owes the controller goes through the spool: a heartbeat is
collected every interval whether or not a stream is up, a command result as soon
as the command has run. While a stream is up, a sender writes the spool's messages
in sequence order; the controller's acks make the spool forget them. A new stream
starts from what the controller says it has stored (Welcome.last_stored_seq), so a
cut link, an agent restart or a controller restart replays what is missing and
nothing twice. When a stream breaks, the link waits a backoff delay with full
jitter and opens a new one.

Nothing that writes the spool runs on the event loop (each write ends in an fsync,
tens of ms on a panel's eMMC, which would stall the stream): heartbeats, acks and
Welcome's line-up go to asyncio's default pool; lesson events and command results,
which are never dropped, go to the link's one spool-writer thread, so that they are
stored in the order they happened. The sender is woken once a message is on disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from agent.backoff import Reconnects
from agent.enroll import Credentials
from agent.errors import SpoolError
from agent.launcher import Launcher
from agent.lessons import LessonEvent, LessonLaunch
from agent.link_messages import (
    from_spool,
    heartbeat,
    launch_from_pb,
    lesson_event_to_pb,
    spool_body,
    thresholds_from_pb,
)
from agent.link_uplink import UplinkMeasurer
from agent.network import has_default_route
from agent.renewal import CAPABILITY as RENEW_CAPABILITY
from agent.renewal import Renewal
from agent.report import FullReports, Reporter
from agent.settings import AgentSettings
from agent.spool import Spool
from common.retry_hint import RetryHint, ended_unsaid, read_hint, unsaid_restart
from protos.schoolfleet.v1 import agent_pb2, agent_pb2_grpc
from wire.mapping import KIND_TO_PB, os_to_pb, timestamp

log = logging.getLogger(__name__)

# Command ids remembered for at-least-once delivery: a resent command runs once.
_SEEN_COMMANDS = 1024
# Seconds to connect and get Welcome; a controller that accepts and says nothing is left.
_HANDSHAKE_TIMEOUT = 30.0
# Seconds an attempt after a restart notice waits for the controller to listen again
# (then the handshake has its own timeout).
_RESTART_WAIT = 15.0
# Seconds a connected stream gets to close cleanly on stop.
_CLOSE_GRACE = 3.0
# Spooled messages read and written per round while replaying.
_SEND_BATCH = 100
# Longest wait between attempts after the controller said it is restarting: it is
# back within seconds, and a 60 s cap would leave a long tail of devices offline.
_RESTART_BACKOFF_CAP = 5.0
# Seconds between full reports until the controller's Welcome says otherwise.
_FULL_REPORT_INTERVAL = 300.0
# Longest a lesson is held for its start: the controller sends it lesson_lead (60 s)
# early; a device clock far behind must not keep the room waiting.
_HOLD_MAX = 300.0


Call = grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControllerMessage]


def channel_options(settings: AgentSettings) -> list[tuple[str, int]]:
    """Keepalive that notices a dead controller within ~40 s; explicit size limits."""
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # While a restarting controller is not yet listening, a stream that waits for
        # it tries to connect again within 5 s rather than gRPC's default 120 s.
        ("grpc.initial_reconnect_backoff_ms", 1_000),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


class StreamEnded(Exception):
    """The controller ended the stream without an error status."""


class CertificateRenewed(StreamEnded):
    """The device has a renewed certificate: a new stream is opened with it at once."""


class Link:
    """Keeps the device reporting into the spool and connected until ``stop`` is set."""

    def __init__(
        self,
        settings: AgentSettings,
        reporter: Reporter,
        spool: Spool,
        version: str,
        credentials: Credentials | None = None,
    ) -> None:
        self._settings = settings
        # Set: mutual TLS with the device's certificate; None: plaintext.
        self._credentials = credentials
        self._reporter = reporter
        self._spool = spool
        # Appends lesson events and command results one at a time, in order.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="spool-writer")
        self._version = version
        # Shows lessons on the kiosk program; its events go into the spool.
        self._launcher = Launcher(
            settings.kiosk_argv,
            emit=self.spool_lesson_event,
            allowed_hosts=lambda: self.content_hosts,
            has_network=has_default_route,
        )
        # Lesson content hosts, from the latest Welcome.
        self.content_hosts: tuple[str, ...] = ()
        # Lesson commands run as tasks (a launch waits for a program to stop first).
        self._lesson_tasks: set[asyncio.Task[None]] = set()
        # Carries out MeasureUplink orders, one at a time; answers go into the spool.
        self._uplink = UplinkMeasurer(settings.controller, self._spool_result)
        self._interval = settings.heartbeat_interval
        self._full = FullReports(_FULL_REPORT_INTERVAL)
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._up_since: float | None = None
        # Seconds the last Welcome named for coming back after an end without the
        # controller's word (0: a controller older than that; plain backoff).
        self._reconnect_spread = 0.0
        # Set when the spool got a message; the sender waits on it.
        self._spooled = asyncio.Event()
        # Renews the certificate over the stream (mutual TLS only); wakes the sender.
        self._renewal = (
            Renewal(credentials, settings.device_id, self._spooled.set) if credentials else None
        )
        # Set to have the next heartbeat collected now (a new stream, a new interval).
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Reports, connects and reconnects with backoff until ``stop`` is set."""
        producer = asyncio.create_task(self._produce(stop))
        try:
            await self._connect_until_stopped(stop)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            if self._renewal is not None:
                self._renewal.cancel()
            # The lesson program goes with the agent; the controller sends the lesson
            # again when the agent is back, if it has not ended.
            for task in list(self._lesson_tasks):
                task.cancel()
            self._uplink.close()
            await self._launcher.close()
            # What is queued is stored before the spool is closed after us.
            await asyncio.to_thread(self._writer.shutdown)

    async def _produce(self, stop: asyncio.Event) -> None:
        """Spools a heartbeat every interval, connected or not."""
        while not stop.is_set():
            self._wake.clear()
            await self._spool_heartbeat()
            waiting = [asyncio.create_task(e.wait()) for e in (stop, self._wake)]
            try:
                await asyncio.wait(waiting, timeout=self._interval, return_when="FIRST_COMPLETED")
            finally:
                for task in waiting:
                    task.cancel()

    async def _spool_heartbeat(self) -> None:
        try:
            # In a thread: the network's and the system's reads (Wi-Fi's netlink, a
            # process scan while the kiosk is down) block.
            report = await asyncio.to_thread(self._reporter.collect)
        except OSError as exc:
            log.error("health not collected, heartbeat skipped: %s", exc)
            return
        full = self._full.due(report, time.monotonic())

        def spool() -> None:
            stats = self._spool.stats()
            message = agent_pb2.AgentMessage(
                heartbeat=heartbeat(report, stats.pending, stats.dropped, full=full)
            )
            self._spool.append(spool_body(message), precious=False)

        try:
            # In a thread too: the spool's write ends in an fsync (tens of ms on a
            # panel's eMMC), which would stall the stream's reads and writes.
            await asyncio.to_thread(spool)
        except SpoolError as exc:
            log.error("heartbeat not spooled, lost: %s", exc)
            return
        self._spooled.set()

    async def _connect_until_stopped(self, stop: asyncio.Event) -> None:
        s = self._settings
        reconnects = Reconnects(
            s.backoff_initial, s.backoff_cap, _RESTART_BACKOFF_CAP, s.backoff_reset_after
        )
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._up_since = None
            reason, hint = await self._stream_until_stopped(stop, reconnects.restarting)
            if stop.is_set():
                break
            if self._renewal is not None and self._renewal.take_switch():
                continue  # the renewed certificate's first stream, now
            # Welcomed, then ended without the controller's word (its process ended, or
            # its word was lost): likely a restart, with the spread the Welcome named.
            stayed_up = self._stayed_up(loop.time())
            unread = stayed_up > 0 and hint is None and ended_unsaid(*reason.partition(": ")[::2])
            own = unsaid_restart(self._reconnect_spread) if unread else None
            delay = reconnects.delay(stayed_up, hint or own, unread)
            log.warning(
                "controller link down controller=%s reason=%s retry_in=%.1fs attempt=%d "
                "spooled=%d%s",
                self._settings.controller,
                reason,
                delay,
                reconnects.attempt,
                self._spool_pending(),
                f" controller_said={hint.reason}"
                if hint
                else f" controller_gone spread={self._reconnect_spread:g}s"
                if own
                else "",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def _spool_pending(self) -> int:
        try:
            return self._spool.stats().pending
        except SpoolError:
            return -1

    def _stayed_up(self, now: float) -> float:
        """Seconds the last stream was up after its Welcome (0 if it never got one)."""
        return 0.0 if self._up_since is None else now - self._up_since

    async def _stream_until_stopped(
        self, stop: asyncio.Event, wait_for_ready: bool
    ) -> tuple[str, RetryHint | None]:
        """Runs one stream; returns why it ended and when the controller said to come
        back, if it did. A stop cuts a hanging connect short."""
        stream = asyncio.create_task(self._stream(stop, wait_for_ready))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({stream, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not stream.done():
                # A connected stream closes itself on stop; one still connecting is cut.
                await asyncio.wait({stream}, timeout=_CLOSE_GRACE)
                stream.cancel()
            await stream
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            return "stopped", None
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}", read_hint(exc.trailing_metadata())
        except (StreamEnded, TimeoutError, SpoolError) as exc:
            return str(exc) or "no Welcome in time", None
        finally:
            stopping.cancel()
        return "stream ended by the controller", None

    def _hello(self) -> agent_pb2.AgentMessage:
        s = self._settings
        return agent_pb2.AgentMessage(
            seq=0,
            hello=agent_pb2.Hello(
                device_id=s.device_id,
                kind=KIND_TO_PB[s.kind],
                school_id=s.school_id,
                room_id=s.room_id,
                hostname=socket.gethostname()[:255],
                agent_version=self._version,
                capabilities=["ping", "lessons", "uplink"]
                + ([RENEW_CAPABILITY] if self._renewal else []),
                os=os_to_pb(self._reporter.os_info()),
                management_address=s.management_address,
                labels=dict(s.label_pairs()),
            ),
        )

    def _channel(self) -> grpc.aio.Channel:
        s = self._settings
        if self._credentials is None:
            return grpc.aio.insecure_channel(s.controller, options=channel_options(s))
        c = self._credentials
        # Read on each connect: a renewed certificate is used without a restart.
        tls = grpc.ssl_channel_credentials(
            root_certificates=c.ca.read_bytes(),
            private_key=c.key.read_bytes(),
            certificate_chain=c.cert.read_bytes(),
        )
        return grpc.aio.secure_channel(s.controller, tls, options=channel_options(s))

    async def _stream(self, stop: asyncio.Event, wait_for_ready: bool) -> None:
        async with self._channel() as channel:
            if wait_for_ready:
                # After the controller said it is restarting: wait for it to listen
                # again (gRPC retries the connection) rather than fail at once.
                try:
                    await asyncio.wait_for(channel.channel_ready(), _RESTART_WAIT)
                except TimeoutError:
                    raise StreamEnded(
                        f"controller not listening again within {_RESTART_WAIT:g}s"
                    ) from None
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                await call.write(self._hello())
                first = await call.read()
            if (
                not isinstance(first, agent_pb2.ControllerMessage)
                or first.WhichOneof("body") != "welcome"
            ):
                raise StreamEnded("controller did not answer Hello with Welcome")
            await self._welcomed(first.welcome)
            receiver = asyncio.create_task(self._receive(call))
            try:
                await self._send_spooled(call, first.welcome.last_stored_seq, receiver, stop)
            finally:
                receiver.cancel()

    async def _welcomed(self, welcome: agent_pb2.Welcome) -> None:
        if welcome.heartbeat_interval_seconds:
            self._interval = float(welcome.heartbeat_interval_seconds)
        if welcome.HasField("thresholds"):
            self._reporter.limits = thresholds_from_pb(welcome.thresholds)
        self._full.interval = float(welcome.full_report_interval_seconds)
        self.content_hosts = tuple(welcome.content_hosts)
        self._reconnect_spread = welcome.reconnect_spread_ms / 1000
        self._full.reset()
        # Off the loop, as every spool write: lining up may forget messages (an fsync).
        await asyncio.to_thread(self._spool.welcome, welcome.last_stored_seq)
        self._up_since = asyncio.get_running_loop().time()
        # A fresh heartbeat now, so the device counts as online at once.
        self._wake.set()
        log.info(
            "controller link up controller=%s device=%s interval=%gs last_stored_seq=%d spooled=%d",
            self._settings.controller,
            self._settings.device_id,
            self._interval,
            welcome.last_stored_seq,
            self._spool_pending(),
        )

    async def _send_spooled(
        self, call: Call, sent: int, receiver: asyncio.Task[None], stop: asyncio.Event
    ) -> None:
        """Writes the spool's messages above ``sent`` in order, as they come, until the
        stream ends or ``stop`` is set."""
        generation = self._spool.generation
        while True:
            if receiver.done():
                receiver.result()  # raises the stream's error, if it had one
                return
            if stop.is_set():
                await call.done_writing()
                await asyncio.wait({receiver}, timeout=2.0)
                return
            if self._spool.generation != generation:
                raise StreamEnded("spool started anew; reconnecting to line it up")
            self._spooled.clear()
            renew = self._renewal.take_request() if self._renewal else None
            if renew is not None:
                await call.write(renew)  # not spooled: asked again on a later stream
            batch = self._spool.pending(sent, _SEND_BATCH)
            for spooled in batch:
                await call.write(from_spool(spooled))
                sent = spooled.seq
            if batch:
                continue
            waiting = [asyncio.create_task(e.wait()) for e in (self._spooled, stop)]
            try:
                await asyncio.wait([receiver, *waiting], return_when="FIRST_COMPLETED")
            finally:
                for task in waiting:
                    task.cancel()

    async def _receive(self, call: Call) -> None:
        while True:
            message = await call.read()
            if not isinstance(message, agent_pb2.ControllerMessage):
                return  # grpc.aio.EOF: the controller ended the stream
            body = message.WhichOneof("body")
            if body == "ack":
                # Off the loop, as heartbeats are: forgetting them is a write too.
                await asyncio.to_thread(self._spool.acknowledge, message.ack.seq)
            elif body == "command":
                self._run_command(message.command)
            elif body == "certificate_status" and self._renewal is not None:
                self._renewal.status(message.certificate_status)
            elif (
                body == "renew_response"
                and self._renewal is not None
                and await self._renewal.answer(message.renew_response)
            ):
                raise CertificateRenewed("certificate renewed")

    async def _launch_at_start(self, command_id: str, cmd: LessonLaunch) -> None:
        """Shows the lesson at its start by this device's clock. The controller sends it
        early (lesson_lead), so that thousands of panels have it by the start; with a
        clock far behind the controller's, it is not held longer than _HOLD_MAX."""
        delay = cmd.starts_at - time.time()
        if delay > 0:
            log.info("lesson held until its start lesson=%s in=%.1fs", cmd.lesson_id, delay)
            await asyncio.sleep(min(delay, _HOLD_MAX))
        await self._launcher.launch(command_id, cmd)

    def spool_lesson_event(self, event: LessonEvent) -> None:
        """The launcher's report: spooled like a command result, never dropped."""
        message = agent_pb2.AgentMessage(lesson_event=lesson_event_to_pb(event))
        self._spool_precious(message, "lesson event not spooled, lost lesson=%s", event.lesson_id)

    def _run_command(self, command: agent_pb2.Command) -> None:
        if command.command_id in self._seen:
            log.info("command already handled, not run again cmd=%s", command.command_id)
            return
        self._seen[command.command_id] = None
        if len(self._seen) > _SEEN_COMMANDS:
            self._seen.popitem(last=False)
        action = command.WhichOneof("action")
        if action in ("launch_lesson", "end_lesson"):
            # Answered by the lesson's events, not by a CommandResult.
            if action == "launch_lesson":
                lesson = launch_from_pb(command.launch_lesson)
                work = self._launch_at_start(command.command_id, lesson)
            else:
                work = self._launcher.end(command.end_lesson.lesson_id)
            task = asyncio.create_task(work, name=f"lesson {command.command_id}")
            self._lesson_tasks.add(task)
            task.add_done_callback(self._lesson_tasks.discard)
            log.info("command handled cmd=%s action=%s", command.command_id, action)
            return
        if action == "measure_uplink":
            self._uplink.order(command)
            return
        result = agent_pb2.CommandResult(
            command_id=command.command_id, finished_at=timestamp(time.time())
        )
        if action == "ping":
            result.status = agent_pb2.CommandResult.STATUS_OK
            result.message = "pong"
        else:
            result.status = agent_pb2.CommandResult.STATUS_UNSUPPORTED
            result.message = f"this agent does not handle {action or 'an empty'} command"
        log.info(
            "command handled cmd=%s action=%s status=%s",
            command.command_id,
            action,
            agent_pb2.CommandResult.Status.Name(result.status),
        )
        self._spool_result(result)

    def _spool_result(self, result: agent_pb2.CommandResult) -> None:
        message = agent_pb2.AgentMessage(command_result=result)
        self._spool_precious(message, "command result not spooled, lost cmd=%s", result.command_id)

    def _spool_precious(self, message: agent_pb2.AgentMessage, lost: str, about: str) -> None:
        """Appends a message that is never dropped, on the spool-writer thread after the
        ones before it; the sender is woken once it is stored. ``lost`` (with ``about``)
        is logged if it cannot be."""
        append = functools.partial(self._spool.append, spool_body(message), precious=True)
        try:
            stored = asyncio.get_running_loop().run_in_executor(self._writer, append)
        except RuntimeError:
            log.error(lost + ": the agent is stopping", about)
            return

        def done(future: asyncio.Future[int | None]) -> None:
            if future.cancelled():  # with the loop: no sender is left to wake
                return
            exc = future.exception()
            if isinstance(exc, SpoolError):
                log.error(lost + ": %s", about, exc)
            elif exc is not None:
                log.error(lost, about, exc_info=exc)  # our bug: with its traceback
            else:
                self._spooled.set()

        stored.add_done_callback(done)
