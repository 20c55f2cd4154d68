"""Lesson commands on the device streams: LaunchLesson and EndLesson out to panels."""

from __future__ import annotations

from controller.fleet.sessions import SessionRegistry
from controller.lessons.dispatcher import LaunchOrder
from protos.schoolfleet.v1 import agent_pb2
from wire.mapping import timestamp


def launch_command(order: LaunchOrder) -> agent_pb2.Command:
    return agent_pb2.Command(
        command_id=order.command_id,
        issued_at=timestamp(order.issued_at),
        launch_lesson=agent_pb2.LaunchLesson(
            lesson_id=order.lesson_id,
            url=order.url,
            starts_at=timestamp(order.starts_at),
            ends_at=timestamp(order.ends_at),
            title=order.title,
            remote=order.remote,
        ),
    )


class SessionPanels:
    """The dispatcher's PanelCourier: commands go on the panel's stream, if it is here."""

    def __init__(self, sessions: SessionRegistry[agent_pb2.ControllerMessage]) -> None:
        self._sessions = sessions

    def encode(self, order: LaunchOrder) -> bytes:
        return launch_command(order).SerializeToString()

    def launch(self, device_id: str, order: LaunchOrder) -> None:
        session = self._sessions.get(device_id)
        if session is not None:
            session.send(agent_pb2.ControllerMessage(command=launch_command(order)))

    def end(self, device_id: str, lesson_id: str, now: float) -> None:
        session = self._sessions.get(device_id)
        if session is None:
            return
        session.send(
            agent_pb2.ControllerMessage(
                command=agent_pb2.Command(
                    command_id=f"end:{lesson_id}:{device_id}",
                    issued_at=timestamp(now),
                    end_lesson=agent_pb2.EndLesson(lesson_id=lesson_id),
                )
            )
        )
