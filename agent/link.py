"""The device's stream to the controller: Hello, heartbeats, acks, commands.

One stream at a time. When it breaks, the link waits a backoff delay with full
jitter and opens a new one; sequence numbers go on from what the controller says
it has stored (Welcome.last_stored_seq), so an agent restart never reuses one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time

import grpc

from agent.backoff import backoff_delay
from agent.health import HealthCollector
from agent.settings import AgentSettings
from protos.mapping import KIND_TO_PB, health_to_pb, timestamp
from protos.schoolfleet.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

# Command ids remembered for at-least-once delivery: a resent command runs once.
_SEEN_COMMANDS = 1024
# Seconds to connect and get Welcome; a controller that accepts and says nothing is left.
_HANDSHAKE_TIMEOUT = 30.0
# Seconds a connected stream gets to close cleanly on stop.
_CLOSE_GRACE = 3.0


Call = grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControllerMessage]


def channel_options(settings: AgentSettings) -> list[tuple[str, int]]:
    """Keepalive that notices a dead controller within ~40 s; explicit size limits."""
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]


class StreamEnded(Exception):
    """The controller ended the stream without an error status."""


class Link:
    """Keeps the device connected and reporting until ``stop`` is set."""

    def __init__(self, settings: AgentSettings, collector: HealthCollector, version: str) -> None:
        self._settings = settings
        self._collector = collector
        self._version = version
        self._interval = settings.heartbeat_interval
        self._next_seq = 1
        self._acked = 0
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._write_lock = asyncio.Lock()
        self._up_since: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Connects, reports, and reconnects with backoff until ``stop`` is set."""
        attempt = 0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._up_since = None
            reason = await self._stream_until_stopped(stop)
            if stop.is_set():
                break
            if self._stayed_up(loop.time()) >= self._settings.backoff_reset_after:
                attempt = 0
            delay = backoff_delay(
                attempt, self._settings.backoff_initial, self._settings.backoff_cap
            )
            attempt += 1
            log.warning(
                "controller link down controller=%s reason=%s retry_in=%.1fs attempt=%d",
                self._settings.controller,
                reason,
                delay,
                attempt,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def _stayed_up(self, now: float) -> float:
        """Seconds the last stream was up after its Welcome (0 if it never got one)."""
        return 0.0 if self._up_since is None else now - self._up_since

    async def _stream_until_stopped(self, stop: asyncio.Event) -> str:
        """Runs one stream; returns why it ended. A stop cuts a hanging connect short."""
        stream = asyncio.create_task(self._stream(stop))
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
            return "stopped"
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        except (StreamEnded, TimeoutError) as exc:
            return str(exc) or "no Welcome in time"
        finally:
            stopping.cancel()
        return "stream ended by the controller"

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
                capabilities=["ping"],
            ),
        )

    async def _stream(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(
            self._settings.controller, options=channel_options(self._settings)
        ) as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                await call.write(self._hello())
                first = await call.read()
            if (
                not isinstance(first, agent_pb2.ControllerMessage)
                or first.WhichOneof("body") != "welcome"
            ):
                raise StreamEnded("controller did not answer Hello with Welcome")
            welcome = first.welcome
            if welcome.heartbeat_interval_seconds:
                self._interval = float(welcome.heartbeat_interval_seconds)
            self._next_seq = max(self._next_seq, welcome.last_stored_seq + 1)
            self._up_since = asyncio.get_running_loop().time()
            log.info(
                "controller link up controller=%s device=%s interval=%gs next_seq=%d",
                self._settings.controller,
                self._settings.device_id,
                self._interval,
                self._next_seq,
            )
            receiver = asyncio.create_task(self._receive(call))
            stopping = asyncio.create_task(stop.wait())
            try:
                while True:
                    await self._send_heartbeat(call)
                    await asyncio.wait(
                        {receiver, stopping},
                        timeout=self._interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if receiver.done():
                        receiver.result()  # raises the stream's error, if it had one
                        return
                    if stopping.done():
                        async with self._write_lock:
                            await call.done_writing()
                        await asyncio.wait({receiver}, timeout=2.0)
                        return
            finally:
                receiver.cancel()
                stopping.cancel()

    async def _send_heartbeat(self, call: Call) -> None:
        try:
            health = self._collector.collect()
        except OSError as exc:
            log.error("health not collected, heartbeat skipped: %s", exc)
            return
        await self._write(
            call, agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(health=health_to_pb(health)))
        )

    async def _write(self, call: Call, message: agent_pb2.AgentMessage) -> None:
        async with self._write_lock:
            message.seq = self._next_seq
            self._next_seq += 1
            await call.write(message)

    async def _receive(self, call: Call) -> None:
        while True:
            message = await call.read()
            if not isinstance(message, agent_pb2.ControllerMessage):
                return  # grpc.aio.EOF: the controller ended the stream
            body = message.WhichOneof("body")
            if body == "ack":
                self._acked = max(self._acked, message.ack.seq)
            elif body == "command":
                await self._run_command(call, message.command)

    async def _run_command(self, call: Call, command: agent_pb2.Command) -> None:
        if command.command_id in self._seen:
            log.info("command already handled, not run again cmd=%s", command.command_id)
            return
        self._seen[command.command_id] = None
        if len(self._seen) > _SEEN_COMMANDS:
            self._seen.popitem(last=False)
        action = command.WhichOneof("action")
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
        await self._write(call, agent_pb2.AgentMessage(command_result=result))
