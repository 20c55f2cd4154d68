"""AgentService in-process for tests: assembled with the parts controller/server.py
gives it (real stores on SQLite, the session registry, the ingest writer, the acks),
served on 127.0.0.1 port 0, and device streams driven by hand from the same loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from controller.api.agent_service import AgentService, Sessions, ack_sender, add_to_server
from controller.api.enroll import Enroller
from controller.api.renewal import Renewals
from controller.enroll.ca_keeper import CaKeeper
from controller.enroll.pki import CA_CERT, init_ca
from controller.fleet.acks import Acks
from controller.fleet.metrics import ControllerMetrics
from controller.fleet.writer import MessageWriter
from controller.people.audit import appender
from controller.settings import ControllerSettings
from controller.stores import Stores, open_stores
from controller.uplink.checks import UplinkAnswer
from inventory.model import DeviceRecord
from protos.schoolfleet.v1 import agent_pb2
from tests.hostile_pki import KeyCert
from tests.raw_stream import CONNECT, hello

SCHOOL = "school-9"
# The longest a test waits for one message or a stream's end.
READ_LIMIT = 5.0


def ack(seq: int) -> agent_pb2.ControllerMessage:
    return agent_pb2.ControllerMessage(ack=agent_pb2.Ack(seq=seq))


async def until(check: Callable[[], object], what: str, limit: float = 5.0) -> None:
    """Polls ``check`` until it is true, for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {limit} s: {what}")
        await asyncio.sleep(0.02)


@dataclass
class Running:
    """The service being served: its port, stores, sessions and metrics."""

    port: int
    stores: Stores
    sessions: Sessions
    registry: CollectorRegistry
    # The CA's certificate, with agent_tls; what a device trusts.
    ca: bytes = b""

    def device(self, device_id: str) -> DeviceRecord | None:
        return self.stores.devices.get_device(device_id, time.time())

    def closed(self, reason: str) -> float | None:
        """Streams closed for ``reason``, as /metrics says."""
        return self.registry.get_sample_value(
            "schoolfleet_streams_closed_total", {"reason": reason}
        )


@contextlib.asynccontextmanager
async def serving(tmp: Path, *, agent_tls: bool = False) -> AsyncIterator[Running]:
    """AgentService with the parts controller/server.py gives it, on 127.0.0.1 port 0;
    with ``agent_tls``, a CA made in ``tmp`` and mutual TLS as in production."""
    settings = ControllerSettings(
        listen="127.0.0.1:0",
        database=f"sqlite:{tmp / 'c.db'}",
        data_dir=tmp,
        agent_tls=agent_tls,
        # Every stored batch acked at once: a test waits for each ack in turn.
        ack_interval=0.0,
        flush_interval=0.01,
        hello_timeout=5.0,
    )
    keeper = CaKeeper(tmp / "pki")
    if agent_tls:
        init_ca(tmp / "pki", ["controller.test"], ["127.0.0.1"])
    stores = open_stores(settings.database)
    write_executor = ThreadPoolExecutor(1, thread_name_prefix="ingest-writer")
    read_executor = ThreadPoolExecutor(2, thread_name_prefix="store")
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    sessions = Sessions()
    audit = appender(stores.people, read_executor)
    acks = Acks(settings.ack_interval, ack_sender(sessions))
    writer = MessageWriter(
        stores.devices,
        write_executor,
        flush_interval=settings.flush_interval,
        batch_max=settings.batch_max,
        queue_max=settings.queue_max,
        on_stored=acks.stored,
        on_flush=metrics.observe_flush,
    )
    answers: list[UplinkAnswer] = []
    service = AgentService(
        settings,
        stores.devices,
        stores.enrollments,
        stores.lessons.pending_commands,
        write_executor,
        sessions,
        metrics,
        Enroller(keeper, stores.enrollments, stores.devices.get_device, audit),
        renewals=Renewals(
            keeper,
            stores.enrollments,
            audit,
            sessions,
            lifetime=settings.device_cert_lifetime,
            spread=settings.ca_rotation_spread,
        ),
        writer=writer,
        acks=acks,
        on_uplink_answer=answers.append,
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    add_to_server(service, server, settings.max_message_bytes)
    if agent_tls:
        port = server.add_secure_port(settings.listen, keeper.credentials(mutual=True))
    else:
        port = server.add_insecure_port(settings.listen)
    await server.start()
    writer_task = asyncio.create_task(writer.run())
    acks_task = asyncio.create_task(acks.run())
    try:
        ca = (tmp / "pki" / CA_CERT).read_bytes() if agent_tls else b""
        yield Running(port, stores, sessions, registry, ca)
    finally:
        await server.stop(1.0)
        await writer.close()
        await asyncio.wait_for(writer_task, 5)
        acks_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acks_task
        write_executor.shutdown(wait=True)
        read_executor.shutdown(wait=True)
        stores.close()


class DeviceStream:
    """One device's Connect stream, driven by hand from the test's event loop."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._outgoing: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
        connect: Any = channel.stream_stream(
            CONNECT,
            request_serializer=agent_pb2.AgentMessage.SerializeToString,
            response_deserializer=agent_pb2.ControllerMessage.FromString,
        )
        self._call = connect(self._requests(), timeout=20)

    async def _requests(self) -> AsyncIterator[agent_pb2.AgentMessage]:
        while (message := await self._outgoing.get()) is not None:
            yield message

    def send(self, message: agent_pb2.AgentMessage) -> None:
        self._outgoing.put_nowait(message)

    def close_sending(self) -> None:
        self._outgoing.put_nowait(None)

    async def next(self) -> agent_pb2.ControllerMessage:
        """The next message down; raises the stream's error if it ended with one."""
        message = await asyncio.wait_for(self._call.read(), READ_LIMIT)
        if message is grpc.aio.EOF:
            raise EOFError("the stream ended")
        assert isinstance(message, agent_pb2.ControllerMessage)
        return message

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """Reads to the stream's end: its status code and details."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await asyncio.wait_for(self._call.read(), READ_LIMIT) is not grpc.aio.EOF:
                pass
        code = await self._call.code()
        return code, await self._call.details() or ""


def open_channel(run: Running, client: KeyCert | None = None) -> grpc.aio.Channel:
    target = f"127.0.0.1:{run.port}"
    if not run.ca:
        return grpc.aio.insecure_channel(target)
    assert client is not None
    credentials = grpc.ssl_channel_credentials(run.ca, client.key, client.cert)
    return grpc.aio.secure_channel(target, credentials)


async def welcomed(stream: DeviceStream, device_id: str, school_id: str = SCHOOL) -> int:
    """Says Hello and reads the Welcome; returns its last_stored_seq."""
    stream.send(hello(device_id, school_id))
    first = await stream.next()
    assert first.WhichOneof("body") == "welcome", first
    return first.welcome.last_stored_seq
