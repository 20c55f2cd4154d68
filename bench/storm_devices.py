"""A restart-storm worker: enrolled devices over mutual TLS, reconnecting like the agent.

Run by bench/restart_storm.py as ``python -m bench.storm_devices``. Each simulated
device has its own key and certificate (from the real Enroll call), its own TCP
connection, and the agent's reconnect rule (agent/backoff.py ``Reconnects``, the
controller's retry hint read with common/retry_hint.py, waiting for the listener
after a restart hint, as agent/link.py does). After each Welcome it sends a
heartbeat at once, like the agent, then one every interval the Welcome names, and
counts its acks.

Prints one JSON line per event: ``{"e": "w", ...}`` a Welcome (with the last sequence
number it says is stored and the highest acked to the device before it), ``{"e": "f",
...}`` an attempt that ended (before or after its Welcome) with its status and whether
the controller gave a retry hint. End of stdin stops it: it prints ``{"e": "acked",
...}``, the highest acked sequence per device, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.backoff import Reconnects
from bench import wire
from common.retry_hint import ended_unsaid, read_hint, unsaid_restart
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2

CONNECT = "/schoolfleet.v1.AgentService/Connect"
# The agent's channel options (agent/link.py channel_options), with a private
# subchannel pool so that every device has its own connection.
OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024),
    ("grpc.max_send_message_length", 64 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.use_local_subchannel_pool", 1),
]
# The agent's defaults: backoff_initial, backoff_cap, the cap after a restart hint,
# backoff_reset_after; and its handshake timeout.
INITIAL, CAP, RESTART_CAP, RESET_AFTER, HANDSHAKE = 1.0, 60.0, 5.0, 30.0, 30.0
# How long an attempt after a restart notice waits for the listener (agent/link.py).
RESTART_WAIT = 15.0

Call = grpc.aio.StreamStreamCall[bytes, bytes]


class NotListening(Exception):
    """After a restart notice, the controller was not listening within RESTART_WAIT."""


@dataclass(slots=True)
class Device:
    """One simulated device: its credentials and how far it has been acked."""

    index: int
    device_id: str
    credentials: grpc.ChannelCredentials
    hello: bytes
    acked: int = 0
    # Loop time of the current stream's Welcome; None before it.
    up: float | None = None
    # Seconds the last Welcome named for coming back after an end without a hint.
    spread: float = 0.0


def _emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")


def _heartbeat(seq: int) -> bytes:
    return agent_pb2.AgentMessage(
        seq=seq,
        heartbeat=agent_pb2.Heartbeat(
            health=fleet_pb2.Health(cpu_percent=5, memory_percent=10, disk_percent=20)
        ),
    ).SerializeToString()


async def _beat(call: Call, seq: int, interval: float) -> None:
    # The stream's end is seen by its reader; a write after it just stops the beats.
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        while True:
            await call.write(_heartbeat(seq))
            seq += 1
            await asyncio.sleep(interval)


async def _stream(address: str, device: Device, wait_for_ready: bool) -> None:
    """One stream until it ends; sets ``device.up`` at its Welcome."""
    async with grpc.aio.secure_channel(address, device.credentials, options=OPTIONS) as channel:
        connect: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(CONNECT)
        if wait_for_ready:
            try:
                await asyncio.wait_for(channel.channel_ready(), RESTART_WAIT)
            except TimeoutError:
                raise NotListening from None
        call: Call = connect()
        async with asyncio.timeout(HANDSHAKE):
            await call.write(device.hello)
            first = await call.read()
        welcome = agent_pb2.ControllerMessage.FromString(first if isinstance(first, bytes) else b"")
        if welcome.WhichOneof("body") != "welcome":
            raise EOFError("stream ended without a Welcome")
        device.up = asyncio.get_running_loop().time()
        device.spread = welcome.welcome.reconnect_spread_ms / 1000
        # What the store held for it, and what it was acked before: the first never
        # below the second, or an acked heartbeat was lost.
        stored, acked = welcome.welcome.last_stored_seq, device.acked
        _emit({"e": "w", "d": device.index, "t": time.time(), "s": stored, "a": acked})
        interval = float(welcome.welcome.heartbeat_interval_seconds or 30)
        beats = asyncio.create_task(_beat(call, welcome.welcome.last_stored_seq + 1, interval))
        try:
            while isinstance(raw := await call.read(), bytes):
                message = agent_pb2.ControllerMessage.FromString(raw)
                if message.WhichOneof("body") == "ack":
                    device.acked = max(device.acked, message.ack.seq)
        finally:
            beats.cancel()


async def _run(address: str, device: Device, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reconnects = Reconnects(INITIAL, CAP, RESTART_CAP, RESET_AFTER)
    while not stop.is_set():
        device.up = None
        hint = None
        try:
            await _stream(address, device, reconnects.restarting)
            code, details = "OK", "stream ended"
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or ""
            hint = read_hint(exc.trailing_metadata())
        except NotListening:
            code, details = "NOT_LISTENING", "no connection: controller not listening yet"
        except (TimeoutError, EOFError) as exc:
            code, details = "NO_WELCOME", str(exc) or "no Welcome in time"
        stayed = 0.0 if device.up is None else loop.time() - device.up
        unread = stayed > 0 and hint is None and ended_unsaid(code, details)
        _emit(
            {
                "e": "f",
                "d": device.index,
                "p": "before" if device.up is None else "after",
                "t": time.time(),
                "c": code,
                "x": details[:160],
                "h": hint.reason if hint else None,
            }
        )
        own = unsaid_restart(device.spread) if unread else None
        delay = reconnects.delay(stayed, hint or own, unread)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


def _load(path: Path, ca: bytes, school_id: str) -> list[Device]:
    devices = []
    for row in json.loads(path.read_text()):
        credentials = grpc.ssl_channel_credentials(ca, row["key"].encode(), row["cert"].encode())
        hello = wire.hello(row["id"], school_id, "r1")
        devices.append(Device(row["index"], row["id"], credentials, hello))
    return devices


async def _main(args: argparse.Namespace) -> None:
    devices = _load(args.devices, args.ca.read_bytes(), args.school)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = [asyncio.create_task(_run(args.address, d, stop)) for d in devices]
    await reader.read()  # end of stdin
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _emit({"e": "acked", "acked": {d.device_id: d.acked for d in devices}})
    sys.stdout.flush()


def main() -> None:
    """Entry point: simulated devices until stdin ends."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--devices", type=Path, required=True)
    parser.add_argument("--school", required=True)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
