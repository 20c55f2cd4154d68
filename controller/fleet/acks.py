"""Acks: at most once per device per interval, and never an ack left behind.

An Ack carries the highest sequence number stored, so one ack stands for all before
it. A device that sends often (replaying its spool, say) would otherwise get an ack
per stored batch, each a gRPC write as costly as the heartbeat itself. A device
acked less than ``interval`` ago has its ack held back and sent by :meth:`due`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

# Shortest pause of the loop that sends acks held back.
_TICK_MIN = 0.1
# Tells a device, on its stream if it has one, that its messages up to seq are stored
# (made by the api edge: it knows the stream and the message).
SendAck = Callable[[str, int], None]


class AckCoalescer:
    """Pure bookkeeping; the caller passes ``now`` (monotonic seconds) and sends."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._sent_at: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def stored(self, highest: dict[str, int], now: float) -> dict[str, int]:
        """Acks to send now for a stored batch; the rest wait for :meth:`due`."""
        send: dict[str, int] = {}
        for device_id, seq in highest.items():
            if now - self._sent_at.get(device_id, -math.inf) >= self._interval:
                send[device_id] = max(seq, self._pending.pop(device_id, 0))
                self._sent_at[device_id] = now
            else:
                self._pending[device_id] = max(seq, self._pending.get(device_id, 0))
        return send

    def due(self, now: float) -> dict[str, int]:
        """Held-back acks whose interval has passed."""
        ready = {
            d: seq
            for d, seq in self._pending.items()
            if now - self._sent_at.get(d, -math.inf) >= self._interval
        }
        for device_id in ready:
            del self._pending[device_id]
            self._sent_at[device_id] = now
        return ready

    def forget(self, device_id: str) -> None:
        """The device's stream ended: its next stream starts afresh (Welcome says the seq)."""
        self._sent_at.pop(device_id, None)
        self._pending.pop(device_id, None)


class Acks:
    """Sends each device the highest sequence number stored, at most once an interval."""

    def __init__(self, interval: float, send: SendAck) -> None:
        self._interval = interval
        self._send = send
        self._coalescer = AckCoalescer(interval)

    def stored(self, highest: dict[str, int]) -> None:
        """The writer stored a batch (its ``on_stored``): ack what may be acked now."""
        self._send_all(self._coalescer.stored(highest, time.monotonic()))

    def forget(self, device_id: str) -> None:
        """The device's stream ended or was replaced."""
        self._coalescer.forget(device_id)

    async def run(self) -> None:
        """Sends the acks held back by coalescing, until cancelled."""
        # With ack_interval 0 nothing is ever held back; the floor keeps the loop idle.
        tick = max(self._interval / 2, _TICK_MIN)
        while True:
            await asyncio.sleep(tick)
            self._send_all(self._coalescer.due(time.monotonic()))

    def _send_all(self, acks: dict[str, int]) -> None:
        for device_id, seq in acks.items():
            self._send(device_id, seq)
