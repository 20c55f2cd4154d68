"""The baseline: a bare grpc.aio server that only counts the messages it receives.

It serves the device stream's method path with a generic handler that neither
parses nor stores: it answers each stream's first message with a pre-encoded
Welcome (so the generator runs the same code against it as against the
controller), then counts every further message until the stream ends. It uses the
controller's server options, so what separates the two is the work the controller
does per message. Counts are on ``/metrics``: ``bench_messages_received_total``
and ``bench_connected_streams``.

Run by bench/ingest.py as ``python -m bench.bare_server --ports-file F``; stops on
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bench import wire
from controller.server import grpc_options
from controller.settings import ControllerSettings


class Counts(Collector):
    """Messages received and streams open; read by /metrics at scrape time."""

    def __init__(self) -> None:
        self.received = 0
        self.streams = 0

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "bench_messages_received", "Messages after the first received on device streams."
        )
        received.add_metric([], self.received)
        streams = GaugeMetricFamily("bench_connected_streams", "Device streams open.")
        streams.add_metric([], self.streams)
        yield received
        yield streams


class CountingHandler:
    """The stream handler: a Welcome for the first message, then only counting."""

    def __init__(self, counts: Counts) -> None:
        self._counts = counts
        self._welcome = wire.welcome()

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        """Serves one stream."""
        counts = self._counts
        counts.streams += 1
        try:
            messages = aiter(requests)
            try:
                await anext(messages)  # Hello, not counted: the controller counts heartbeats
            except StopAsyncIteration:
                return
            yield self._welcome
            async for _ in messages:
                counts.received += 1
        finally:
            counts.streams -= 1


async def serve(ports_file: Path) -> None:
    """Serves on free ports of 127.0.0.1 until SIGTERM; writes the ports when ready."""
    settings = ControllerSettings()
    counts = Counts()
    registry = CollectorRegistry()
    registry.register(counts)
    handler = CountingHandler(counts)
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
    await stop.wait()
    await server.stop(1.0)
    http_server.shutdown()
    http_thread.join(timeout=5)


def main() -> None:
    """``python -m bench.bare_server --ports-file F``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports-file", type=Path, required=True)
    asyncio.run(serve(parser.parse_args().ports_file))


if __name__ == "__main__":
    main()
