"""Lesson commands for the device streams: LaunchLesson and EndLesson out to panels."""

from __future__ import annotations

from collections.abc import Callable

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


def end_command(device_id: str, lesson_id: str, now: float) -> agent_pb2.Command:
    return agent_pb2.Command(
        command_id=f"end:{lesson_id}:{device_id}",
        issued_at=timestamp(now),
        end_lesson=agent_pb2.EndLesson(lesson_id=lesson_id),
    )


class RelayedPanels:
    """The dispatcher's PanelCourier: a command goes on the panel's stream on whichever
    controller sharing the store holds it (``send``: controller/relay/device_commands.py)."""

    def __init__(self, send: Callable[[str, bytes], None]) -> None:
        self._send = send

    def encode(self, order: LaunchOrder) -> bytes:
        return launch_command(order).SerializeToString()

    def launch(self, device_id: str, order: LaunchOrder) -> None:
        self._send(device_id, self.encode(order))

    def end(self, device_id: str, lesson_id: str, now: float) -> None:
        self._send(device_id, end_command(device_id, lesson_id, now).SerializeToString())
