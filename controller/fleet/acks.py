"""When to ack: at most once per device per interval, and never an ack left behind.

An Ack carries the highest sequence number stored, so one ack stands for all before
it. A device that sends often (replaying its spool, say) would otherwise get an ack
per stored batch, each a gRPC write as costly as the heartbeat itself. A device
acked less than ``interval`` ago has its ack held back and sent by :meth:`due`.
"""

from __future__ import annotations

import math


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
