"""Uplink checks on the device streams: MeasureUplink orders out, their answers in."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from controller.fleet.sessions import SessionRegistry
from controller.uplink.checks import MeasureOrder, UplinkAnswer
from protos.schoolfleet.v1 import agent_pb2
from wire.mapping import timestamp

# What an agent that handles MeasureUplink says in Hello.capabilities.
CAPABILITY = "uplink"
# Command ids of MeasureUplink orders start so (controller/uplink/checks.py makes them).
COMMAND_PREFIX = "uplink-"


class SessionCourier:
    """Sends MeasureUplink on the device's stream, if the stream is on this controller."""

    def __init__(
        self,
        sessions: SessionRegistry[agent_pb2.ControllerMessage],
        now: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._now = now

    def holds(self, device_id: str) -> bool:
        return self._sessions.get(device_id) is not None

    def can_measure(self, device_id: str) -> bool:
        session = self._sessions.get(device_id)
        return session is not None and CAPABILITY in session.capabilities

    def send(self, device_id: str, order: MeasureOrder) -> bool:
        session = self._sessions.get(device_id)
        if session is None or session.closing is not None:
            return False
        session.send(
            agent_pb2.ControllerMessage(
                command=agent_pb2.Command(
                    command_id=order.command_id,
                    issued_at=timestamp(self._now()),
                    measure_uplink=agent_pb2.MeasureUplink(
                        port=order.port,
                        path=order.path,
                        bytes=order.bytes,
                        timeout_seconds=math.ceil(order.timeout),
                    ),
                )
            )
        )
        return True


def uplink_answer(device_id: str, result: agent_pb2.CommandResult) -> UplinkAnswer | None:
    """The answer in a CommandResult, if it answers a MeasureUplink; figures unchecked
    (controller/uplink/plan.py judges them)."""
    if not result.command_id.startswith(COMMAND_PREFIX):
        return None
    message = result.message[:500]
    if result.status == agent_pb2.CommandResult.STATUS_UNSUPPORTED:
        message = f"the device's agent does not measure uplinks ({message})"
    return UplinkAnswer(
        device_id=device_id,
        command_id=result.command_id,
        ok=result.status == agent_pb2.CommandResult.STATUS_OK and result.HasField("uplink"),
        message=message,
        received=result.uplink.bytes,
        seconds=result.uplink.seconds,
    )
