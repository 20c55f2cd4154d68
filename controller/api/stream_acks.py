"""Acks on the device streams: what the writer stored, told to each device, coalesced
(controller/fleet/acks.py decides when)."""

from __future__ import annotations

import asyncio
import time

from controller.fleet.acks import AckCoalescer
from controller.fleet.sessions import SessionRegistry
from protos.schoolfleet.v1 import agent_pb2

# Shortest pause of the loop that sends acks held back.
_TICK_MIN = 0.1


class StreamAcks:
    """Sends each device the highest sequence number stored, at most once an interval."""

    def __init__(
        self, sessions: SessionRegistry[agent_pb2.ControllerMessage], interval: float
    ) -> None:
        self._sessions = sessions
        self._interval = interval
        self._coalescer = AckCoalescer(interval)

    def stored(self, highest: dict[str, int]) -> None:
        """The writer stored a batch (its ``on_stored``): ack what may be acked now."""
        self._send(self._coalescer.stored(highest, time.monotonic()))

    def forget(self, device_id: str) -> None:
        """The device's stream ended or was replaced."""
        self._coalescer.forget(device_id)

    async def run(self) -> None:
        """Sends the acks held back by coalescing, until cancelled."""
        # With ack_interval 0 nothing is ever held back; the floor keeps the loop idle.
        tick = max(self._interval / 2, _TICK_MIN)
        while True:
            await asyncio.sleep(tick)
            self._send(self._coalescer.due(time.monotonic()))

    def _send(self, acks: dict[str, int]) -> None:
        for device_id, seq in acks.items():
            session = self._sessions.get(device_id)
            if session is not None:
                session.send(agent_pb2.ControllerMessage(ack=agent_pb2.Ack(seq=seq)))
