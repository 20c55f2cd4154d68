"""A load-generator worker: simulated devices in one process, one TCP connection each.

Run by bench/ingest.py as ``python -m bench.loadgen``, and driven over stdin and
stdout with one JSON object per line. The worker opens every device's stream
(Hello, then waits for Welcome) and prints ``{"event": "ready", ...}``; then it
obeys ``start`` (begin heartbeats), ``sample`` (print its counters) and ``stop``
(half-close every stream, print the final counters, exit). End of input is a stop,
so a worker never outlives its orchestrator.

Each device keeps reading its stream (the controller acks every stored batch and
cuts off an agent that stops reading) and counts how far it has been acked. A
device whose stream fails records the error as data and is not reconnected.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc

from bench import wire

log = logging.getLogger("bench.loadgen")

Call = grpc.aio.StreamStreamCall[bytes, bytes]

# The agent's channel options (agent/link.py), plus a private subchannel pool: channels
# to one target with equal options otherwise share a single TCP connection.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024),
    ("grpc.max_send_message_length", 64 * 1024),
    ("grpc.use_local_subchannel_pool", 1),
]


class NoWelcome(Exception):
    """The server did not answer Hello with a Welcome."""


@dataclass(slots=True)
class Device:
    """One simulated device and what happened to its stream."""

    device_id: str
    hello: bytes
    call: Call | None = None
    first_seq: int = 1
    next_seq: int = 1
    acked_seq: int = 0
    # Messages after the Welcome (acks, commands).
    received: int = 0
    writing: bool = False
    open: bool = False
    error: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def sent(self) -> int:
        """Heartbeats written to the stream."""
        return self.next_seq - self.first_seq

    @property
    def acked(self) -> int:
        """Heartbeats the server has acked as stored."""
        return max(0, self.acked_seq - self.first_seq + 1)


class Streamed(Protocol):
    """What connect_each needs of a simulated device."""

    open: bool
    error: str | None


S = TypeVar("S", bound=Streamed)


async def connect_each(
    devices: Sequence[S],
    connect: Callable[[S], Awaitable[None]],
    concurrency: int,
    per_device: float,
    errors: Callable[[], dict[str, int]],
) -> dict[str, object]:
    """Opens every device's stream, ``concurrency`` at a time, each given ``per_device``
    seconds; failures are counted, not raised. Returns the "ready" record."""
    started = time.monotonic()
    slots = asyncio.Semaphore(concurrency)

    async def one(device: S) -> None:
        async with slots:
            try:
                await asyncio.wait_for(connect(device), per_device)
            except TimeoutError:
                device.error = "connect timed out"
            except grpc.aio.AioRpcError as exc:
                device.error = f"connect {exc.code().name}: {exc.details()}"
            except NoWelcome as exc:
                device.error = str(exc)

    await asyncio.gather(*(one(d) for d in devices))
    return {
        "event": "ready",
        "connected": sum(d.open for d in devices),
        "failed": sum(not d.open for d in devices),
        "seconds": time.monotonic() - started,
        "errors": errors(),
    }


async def open_stream(
    target: str, channels: list[grpc.aio.Channel], hello: bytes
) -> tuple[Call, int]:
    """A Connect stream on its own channel, Hello sent and Welcome read: the call and
    the controller's last stored seq."""
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    channels.append(channel)
    connect: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
        wire.CONNECT_METHOD
    )
    call = connect()
    await call.write(hello)
    first = await call.read()
    last_seq = wire.read_welcome(first) if isinstance(first, bytes) else None
    if last_seq is None:
        raise NoWelcome("stream ended before a Welcome")
    return call, last_seq


class Fleet:
    """The devices of one worker process and the tasks that drive them."""

    def __init__(self, target: str, devices: list[Device], rate: float) -> None:
        self._target = target
        self._devices = devices
        self._interval = 1.0 / rate
        self._body = wire.heartbeat_body(full=False)
        self._full_body = wire.heartbeat_body(full=True)
        wire.check_encoding(self._body)
        wire.check_encoding(self._full_body)
        self._channels: list[grpc.aio.Channel] = []
        self._stopping = False

    async def connect_all(self, concurrency: int, per_device: float) -> dict[str, object]:
        """Opens every device's stream; see connect_each."""
        return await connect_each(
            self._devices, self._connect, concurrency, per_device, self._errors
        )

    async def _connect(self, device: Device) -> None:
        call, last_seq = await open_stream(self._target, self._channels, device.hello)
        device.call = call
        device.first_seq = device.next_seq = last_seq + 1
        device.open = True
        device.tasks.append(asyncio.create_task(self._read(device, call)))

    async def _read(self, device: Device, call: Call) -> None:
        try:
            while True:
                raw = await call.read()
                if not isinstance(raw, bytes):
                    break  # the server ended the stream
                device.received += 1
                seq = wire.read_ack(raw)
                if seq is not None and seq > device.acked_seq:
                    device.acked_seq = seq
        except grpc.aio.AioRpcError as exc:
            if not self._stopping:
                device.error = f"{exc.code().name}: {exc.details()}"
        finally:
            device.open = False

    def start(self) -> None:
        """Starts every open device's heartbeats, at random phases within the interval."""
        for device in self._devices:
            if device.open and device.call is not None:
                device.tasks.append(asyncio.create_task(self._send(device, device.call)))

    async def _send(self, device: Device, call: Call) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval
        due = loop.time() + random.uniform(0.0, interval)
        while device.open and not self._stopping:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            device.writing = True
            try:
                full = device.next_seq % wire.FULL_EVERY == 1
                body = self._full_body if full else self._body
                await call.write(wire.heartbeat(device.next_seq, body))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the reader records why the stream ended
            finally:
                device.writing = False
            device.next_seq += 1
            # Fixed rate; after a stall, catch up by at most one interval, not in a burst.
            due = max(due + interval, loop.time() - interval)

    def sample(self, event: str = "sample") -> dict[str, object]:
        """The worker's counters now."""
        return {
            "event": event,
            "at": time.monotonic(),
            "sent": sum(d.sent for d in self._devices),
            "acked": sum(d.acked for d in self._devices),
            "received": sum(d.received for d in self._devices),
            "open": sum(d.open for d in self._devices),
            "errors": self._errors(),
        }

    def _errors(self) -> dict[str, int]:
        counts = collections.Counter(d.error for d in self._devices if d.error)
        return dict(counts.most_common(5))

    async def stop(self, grace: float) -> None:
        """Stops heartbeats and half-closes every stream, as a stopping agent does; each
        step gets ``grace`` seconds before what is left of it is cancelled."""
        self._stopping = True
        # A write cancelled midway cancels its whole RPC: cancel only sleeping senders.
        for device in self._devices:
            for task in device.tasks[1:]:
                if not device.writing:
                    task.cancel()
        senders = [t for d in self._devices for t in d.tasks[1:]]
        await _wait(senders, grace)
        calls = [d.call for d in self._devices if d.open and d.call is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.done_writing() for c in calls), return_exceptions=True),
                grace,
            )
        await _wait([d.tasks[0] for d in self._devices if d.tasks], grace)
        await _wait([asyncio.create_task(c.close(None)) for c in self._channels], grace)


async def _wait(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Waits up to ``grace`` seconds for the tasks, then cancels what is left."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def devices_for(first: int, count: int) -> list[Device]:
    """Devices ``first`` .. ``first+count-1``: 25 to a room, 500 to a school."""
    return [
        Device(
            device_id=f"bench-dev-{i:05d}",
            hello=wire.hello(
                f"bench-dev-{i:05d}", f"bench-school-{i // 500:02d}", f"room-{i // 25 % 20:02d}"
            ),
        )
        for i in range(first, first + count)
    ]


async def run(args: argparse.Namespace) -> None:
    """Connects, then obeys the orchestrator's commands until stop or end of input."""
    fleet = Fleet(args.target, devices_for(args.first, args.count), args.rate)
    _emit(await fleet.connect_all(args.concurrency, args.connect_timeout))
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        command = line.strip()
        if command == "start":
            fleet.start()
        elif command == "sample":
            _emit(fleet.sample())
        elif command == "stop" or not line:
            break
    await fleet.stop(grace=5.0)
    _emit(fleet.sample("stopped"))


def main() -> None:
    """``python -m bench.loadgen --target HOST:PORT --first I --count N --rate R``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the server under test")
    parser.add_argument("--first", type=int, default=0, help="index of the first device")
    parser.add_argument("--count", type=int, required=True, help="devices in this process")
    parser.add_argument("--rate", type=float, required=True, help="heartbeats/s per device")
    parser.add_argument("--concurrency", type=int, default=64, help="connects in flight")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="per device, s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="loadgen: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
