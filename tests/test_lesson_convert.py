"""A panel's LessonEvent, checked on its way in."""

from __future__ import annotations

import pytest

from controller.api.lesson_convert import lesson_event_from_pb
from controller.errors import ProtocolError
from inventory.lessons import EventKind, FailReason
from protos.schoolfleet.v1 import agent_pb2

E = agent_pb2.LessonEvent


def test_a_failed_event_keeps_its_reason_and_a_short_message() -> None:
    event = lesson_event_from_pb(
        "p1",
        E(
            lesson_id="s1/r1/20261124T0830Z",
            command_id="launch:x",
            kind=E.KIND_FAILED,
            reason=E.REASON_URL_REFUSED,
            message="m" * 600,
        ),
    )
    assert (event.kind, event.reason, event.device_id) == (
        EventKind.FAILED,
        FailReason.URL_REFUSED,
        "p1",
    )
    assert len(event.message) == 500


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": 99}, "LessonEvent.kind 99 is not a known kind"),
        ({"kind": E.KIND_FAILED, "reason": 0}, "LessonEvent.reason 0 is not a known reason"),
        ({"lesson_id": ""}, "LessonEvent.lesson_id must be 1 to 255 characters"),
        ({"command_id": "c" * 256}, "LessonEvent.command_id must be 1 to 255 characters"),
    ],
)
def test_malformed_events_are_refused(fields: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"lesson_id": "l", "command_id": "c", "kind": E.KIND_LAUNCHED}
    with pytest.raises(ProtocolError, match=message):
        lesson_event_from_pb("p1", E(**{**base, **fields}))  # type: ignore[arg-type]
