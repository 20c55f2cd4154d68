"""Commands on the device streams this controller holds, whoever decided them: the
relay's delivery (controller/relay/device_commands.py), and the outbox sent again to
every stream here when relayed commands may have been missed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError

from controller.errors import StoreError
from controller.fleet.sessions import SessionRegistry
from controller.offload import Offload
from protos.schoolfleet.v1 import agent_pb2

log = logging.getLogger(__name__)

Sessions = SessionRegistry[agent_pb2.ControllerMessage]


def deliver_here(sessions: Sessions) -> Callable[[str, bytes], bool]:
    """Sends a serialized command on the device's stream if it is here; says whether
    the stream is here (a command that does not parse is dropped and logged)."""

    def here(device_id: str, data: bytes) -> bool:
        session = sessions.get(device_id)
        if session is None or session.closing is not None:
            return False
        try:
            command = agent_pb2.Command.FromString(data)
        except DecodeError:
            log.error("relayed command for device %r does not parse; dropped", device_id)
            return True
        session.send(agent_pb2.ControllerMessage(command=command))
        return True

    return here


class OutboxResend:
    """Sends every stream here its device's pending commands again (``pending``: the
    lessons' outbox), after relayed commands may have been lost."""

    def __init__(
        self,
        sessions: Sessions,
        pending: Callable[[str, float], list[bytes]],
        off: Offload,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._pending = pending
        self._off = off
        self._now = now

    async def __call__(self) -> int:
        """Returns how many commands were sent."""
        here = deliver_here(self._sessions)
        sent = 0
        for session in self._sessions.current():
            try:
                pending = await self._off(self._pending, session.device_id, self._now())
            except StoreError as exc:
                # The device still gets them on its next stream.
                log.error("outbox not resent device=%s error=%s", session.device_id, exc)
                continue
            for data in pending:
                sent += here(session.device_id, data)
        return sent
