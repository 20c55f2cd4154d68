"""Lessons and lesson events between the wire and our values, checked on the way in."""

from __future__ import annotations

from controller.errors import ProtocolError
from inventory.lessons import EventKind, FailReason, LessonEvent
from protos.schoolfleet.v1 import agent_pb2
from wire.mapping import seconds

_ID_MAX = 255
_MESSAGE_MAX = 500

EVENT_KIND_FROM_PB = {
    agent_pb2.LessonEvent.KIND_LAUNCHED: EventKind.LAUNCHED,
    agent_pb2.LessonEvent.KIND_FAILED: EventKind.FAILED,
    agent_pb2.LessonEvent.KIND_ENDED: EventKind.ENDED,
    agent_pb2.LessonEvent.KIND_RELAUNCHED: EventKind.RELAUNCHED,
}
REASON_FROM_PB = {
    agent_pb2.LessonEvent.REASON_NO_PROGRAM: FailReason.NO_PROGRAM,
    agent_pb2.LessonEvent.REASON_URL_REFUSED: FailReason.URL_REFUSED,
    agent_pb2.LessonEvent.REASON_CRASHED: FailReason.CRASHED,
    agent_pb2.LessonEvent.REASON_NO_NETWORK: FailReason.NO_NETWORK,
}


def lesson_event_from_pb(device_id: str, e: agent_pb2.LessonEvent) -> LessonEvent:
    """A panel's LessonEvent, checked: ProtocolError names what is wrong."""
    kind = EVENT_KIND_FROM_PB.get(e.kind)
    if kind is None:
        raise ProtocolError(f"LessonEvent.kind {e.kind} is not a known kind")
    reason = None
    if kind is EventKind.FAILED:
        reason = REASON_FROM_PB.get(e.reason)
        if reason is None:
            raise ProtocolError(f"LessonEvent.reason {e.reason} is not a known reason")
    for name in ("lesson_id", "command_id"):
        value = getattr(e, name)
        if not value or len(value) > _ID_MAX:
            raise ProtocolError(f"LessonEvent.{name} must be 1 to {_ID_MAX} characters")
    return LessonEvent(
        lesson_id=e.lesson_id,
        device_id=device_id,
        command_id=e.command_id,
        kind=kind,
        reason=reason,
        message=e.message[:_MESSAGE_MAX],
        at=seconds(e.at),
    )
