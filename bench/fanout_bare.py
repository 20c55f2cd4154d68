"""The lesson fan-out's baseline: a bare grpc.aio server that pushes one message per stream.

It serves the device stream's method path with a generic handler on bytes, like
bench/bare_server.py, and the controller's server options. Each stream's Hello is
answered with a pre-encoded Welcome, and a LaunchLesson command of the controller's
shape (same fields, same size) is encoded for it there and then. On SIGUSR1 the
server queues its command on every open stream at once; it then counts the
LessonEvent answers, and notes when the last one arrived. So what it measures is
this machine's floor for the controller's fan-out: one Python process writing one
message to each of N streams, and the same generators reading and answering them,
with no schedule, store or dispatcher. Heartbeats are read and counted, not acked.

Figures on ``/metrics``: ``bench_fanout_streams``, ``bench_fanout_pushed``,
``bench_fanout_answers``, ``bench_fanout_push_at`` and ``bench_fanout_answered_at``
(wall seconds; 0 until it happened). Run by bench/lesson_fanout.py as
``python -m bench.fanout_bare --ports-file F``; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bench import wire
from controller.server import grpc_options
from controller.settings import ControllerSettings
from protos.schoolfleet.v1 import agent_pb2

# AgentMessage field 13 (lesson_event), wire type 2: the tag after the seq varint.
_LESSON_EVENT_TAG = 0x6A


def is_lesson_event(raw: bytes) -> bool:
    """Whether an AgentMessage as the panels encode it (seq first) is a LessonEvent."""
    if not raw or raw[0] != 0x08:
        return False
    i = 1
    while i < len(raw) and raw[i] & 0x80:
        i += 1
    return i + 1 < len(raw) and raw[i + 1] == _LESSON_EVENT_TAG


def launch_for(hello: agent_pb2.Hello, now: float) -> bytes:
    """A ControllerMessage like the dispatcher's LaunchLesson for this panel."""
    lesson_id = f"{hello.school_id}/{hello.room_id}/20260101T0800Z"
    command = agent_pb2.Command(
        command_id=f"launch:{lesson_id}:{hello.device_id}",
        launch_lesson=agent_pb2.LaunchLesson(
            lesson_id=lesson_id,
            url=f"https://lessons.example.edu/{hello.school_id}/{hello.room_id}/maths",
            title="7B maths",
        ),
    )
    for stamp, at in (
        (command.issued_at, now),
        (command.launch_lesson.starts_at, now),
        (command.launch_lesson.ends_at, now + 2700),
    ):
        stamp.FromNanoseconds(int(at * 1e9))
    return agent_pb2.ControllerMessage(command=command).SerializeToString()


class FanOut(Collector):
    """The open streams, the push and the answers; read by /metrics at scrape time."""

    def __init__(self) -> None:
        self.outboxes: dict[int, tuple[asyncio.Queue[bytes], bytes]] = {}
        self.pushed = 0
        self.answers = 0
        self.push_at = 0.0
        self.answered_at = 0.0

    def push(self) -> None:
        """Queues every open stream's command, now."""
        self.push_at = time.time()
        for queue, command in self.outboxes.values():
            queue.put_nowait(command)
        self.pushed = len(self.outboxes)

    def answered(self) -> None:
        """Counts one LessonEvent; notes the time of the last one expected."""
        self.answers += 1
        if self.answers == self.pushed:
            self.answered_at = time.time()

    def collect(self) -> Iterator[Metric]:
        for name, value in (
            ("streams", len(self.outboxes)),
            ("pushed", self.pushed),
            ("answers", self.answers),
            ("push_at", self.push_at),
            ("answered_at", self.answered_at),
        ):
            family = GaugeMetricFamily(f"bench_fanout_{name}", f"The bare fan-out's {name}.")
            family.add_metric([], value)
            yield family


class PushHandler:
    """The stream handler: Welcome, then the pushed command; answers are counted."""

    def __init__(self, fanout: FanOut) -> None:
        self._fanout = fanout
        self._welcome = wire.welcome()
        self._ids = itertools.count(1)

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        """Serves one stream."""
        messages = aiter(requests)
        try:
            first = await anext(messages)
        except StopAsyncIteration:
            return
        hello = agent_pb2.AgentMessage.FromString(first).hello
        stream_id = next(self._ids)
        outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._fanout.outboxes[stream_id] = (outbox, launch_for(hello, time.time()))
        reader = asyncio.create_task(self._read(messages))
        try:
            yield self._welcome
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()
            del self._fanout.outboxes[stream_id]

    async def _read(self, messages: AsyncIterator[bytes]) -> None:
        async for raw in messages:
            if is_lesson_event(raw):
                self._fanout.answered()


async def serve(ports_file: Path) -> None:
    """Serves on free ports of 127.0.0.1 until SIGTERM; writes the ports when ready."""
    settings = ControllerSettings()
    fanout = FanOut()
    registry = CollectorRegistry()
    registry.register(fanout)
    handler = PushHandler(fanout)
    server = grpc.aio.server(
        options=grpc_options(settings), maximum_concurrent_rpcs=settings.max_streams + 256
    )
    service, _, method = wire.CONNECT_METHOD.strip("/").partition("/")
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service, {method: grpc.stream_stream_rpc_method_handler(handler.connect)}
            ),
        )
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    http_server, http_thread = start_http_server(0, "127.0.0.1", registry)
    await server.start()
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"grpc": grpc_port, "metrics": http_server.server_port}))
    os.replace(tmp, ports_file)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, fanout.push)
    await stop.wait()
    await server.stop(1.0)
    http_server.shutdown()
    http_thread.join(timeout=5)


def main() -> None:
    """``python -m bench.fanout_bare --ports-file F``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports-file", type=Path, required=True)
    asyncio.run(serve(parser.parse_args().ports_file))


if __name__ == "__main__":
    main()
