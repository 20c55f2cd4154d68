"""Commands on the device streams this controller holds, whoever decided them: the
relay's delivery (controller/relay/device_commands.py), and the outbox sent again to
every stream here when relayed commands may have been missed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

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
    lessons' outbox, every held device's in one read), after relayed commands may have
    been lost."""

    def __init__(
        self,
        sessions: Sessions,
        pending: Callable[[Collection[str], float], dict[str, list[bytes]]],
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
        held = {session.device_id for session in self._sessions.current()}
        if not held:
            return 0
        try:
            pending = await self._off(self._pending, held, self._now())
        except StoreError as exc:
            # The devices still get them on their next streams.
            log.error("outbox not resent devices=%d error=%s", len(held), exc)
            return 0
        sent = 0
        for device_id, commands in pending.items():
            for data in commands:
                sent += here(device_id, data)
        return sent
