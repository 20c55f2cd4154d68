"""The agent's values in wire form: the same bytes the agent sent when the launcher and
the spool spoke protobuf themselves, and read by the controller as they were meant."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.lessons import LessonEvent
from agent.link_messages import (
    from_spool,
    launch_from_pb,
    lesson_event_to_pb,
    spool_body,
    thresholds_from_pb,
)
from agent.spool import Spooled
from agent.status import Thresholds
from controller.api.lesson_convert import lesson_event_from_pb
from inventory.lessons import EventKind, FailReason
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from wire.mapping import seconds, timestamp

E = agent_pb2.LessonEvent
_IDS = st.text(min_size=1, max_size=255)


@st.composite
def events(draw: st.DrawFn) -> LessonEvent:
    kind = draw(st.sampled_from(EventKind))
    reason = None
    if kind is EventKind.FAILED:
        reason = draw(st.sampled_from([r for r in FailReason if r is not FailReason.NOT_REACHED]))
    at = draw(st.integers(0, 2**33)) / 1000
    return LessonEvent(draw(_IDS), draw(_IDS), kind, reason, draw(st.text(max_size=500)), at)


@given(events())
def test_a_lesson_event_goes_out_as_the_launcher_built_it(event: LessonEvent) -> None:
    # How agent/launcher.py built the message itself, before it spoke values.
    before = E(
        lesson_id=event.lesson_id,
        command_id=event.command_id,
        kind=E.Kind.Value(f"KIND_{event.kind.name}"),
        reason=E.Reason.Value(f"REASON_{event.reason.name}")
        if event.reason
        else E.REASON_UNSPECIFIED,
        message=event.message,
        at=timestamp(event.at),
    )
    sent = lesson_event_to_pb(event)
    assert sent.SerializeToString() == before.SerializeToString()
    stored = lesson_event_from_pb("p1", sent)
    assert (stored.lesson_id, stored.command_id, stored.kind, stored.reason, stored.message) == (
        event.lesson_id,
        event.command_id,
        event.kind,
        event.reason,
        event.message,
    )
    assert abs(stored.at - event.at) < 1e-6


def test_a_launch_keeps_the_controllers_times() -> None:
    cmd = agent_pb2.LaunchLesson(
        lesson_id="s1/r1/20261207T0830Z",
        url="https://school.example/x",
        starts_at=timestamp(1_796_632_200.25),
        ends_at=timestamp(1_796_634_900.5),
        title="7B mathematics",
    )
    lesson = launch_from_pb(cmd)
    assert (lesson.lesson_id, lesson.url) == (cmd.lesson_id, cmd.url)
    # The very floats the launcher and the link read from the message before.
    assert (lesson.starts_at, lesson.ends_at) == (seconds(cmd.starts_at), seconds(cmd.ends_at))
    assert abs(lesson.starts_at - 1_796_632_200.25) < 1e-6


def test_the_spool_keeps_the_bytes_it_always_kept() -> None:
    message = agent_pb2.AgentMessage(
        seq=7, command_result=agent_pb2.CommandResult(command_id="c1", message="pong")
    )
    body = spool_body(message)
    # What agent/spool.py stored before it kept bytes: the message with seq 0.
    assert body == agent_pb2.AgentMessage(command_result=message.command_result).SerializeToString()
    sent = from_spool(Spooled(41, body))
    assert sent.seq == 41
    assert sent.command_result.message == "pong"


def test_thresholds_the_controller_left_at_zero_keep_the_defaults() -> None:
    got = thresholds_from_pb(fleet_pb2.Thresholds(disk_critical_percent=97))
    assert got == Thresholds(disk_critical=97)
