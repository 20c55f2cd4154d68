"""A hand-driven device stream, for sending what a well-behaved agent never would."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import cast

import grpc

from protos.schoolfleet.v1 import agent_pb2, fleet_pb2

CONNECT = "/schoolfleet.v1.AgentService/Connect"


def hello(
    device_id: str, school_id: str = "school-9", room_id: str = "r1"
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        seq=0,
        hello=agent_pb2.Hello(
            device_id=device_id,
            kind=fleet_pb2.DEVICE_KIND_PANEL,
            school_id=school_id,
            room_id=room_id,
        ),
    )


def heartbeat(seq: int, cpu: float = 5.0) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        seq=seq,
        heartbeat=agent_pb2.Heartbeat(
            health=fleet_pb2.Health(cpu_percent=cpu, memory_percent=10, disk_percent=20)
        ),
    )


class RawStream:
    """A Connect stream that writes raw bytes and reads raw bytes, from a thread."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        options = [("grpc.so_reuseport", 0)]
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._outgoing: queue.Queue[bytes | None] = queue.Queue()
        method: grpc.StreamStreamMultiCallable[bytes, bytes] = self._channel.stream_stream(CONNECT)
        call = method(self._requests(), timeout=30)
        self._call = cast(grpc.Call, call)
        self._responses = cast(Iterator[bytes], call)
        self.received: queue.Queue[bytes | grpc.RpcError | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator[bytes]:
        while (item := self._outgoing.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for item in self._responses:
                self.received.put(item)
            self.received.put(None)
        except grpc.RpcError as exc:
            self.received.put(exc)

    def send(self, message: agent_pb2.AgentMessage | bytes) -> None:
        self._outgoing.put(message if isinstance(message, bytes) else message.SerializeToString())

    def close_sending(self) -> None:
        self._outgoing.put(None)

    def next(self, timeout: float = 10) -> agent_pb2.ControllerMessage:
        """The next message down; raises the stream's error if it ended with one."""
        item = self.received.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        if item is None:
            raise EOFError("stream ended")
        return agent_pb2.ControllerMessage.FromString(item)

    def status(self, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
        """Reads until the stream ends; its final status code and details."""
        while True:
            item = self.received.get(timeout=timeout)
            if isinstance(item, grpc.RpcError) or item is None:
                return self._call.code(), self._call.details() or ""

    def __enter__(self) -> RawStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close_sending()
        self._channel.close()
