"""The agent's side of MeasureUplink: the order checked, the transfer run off the event
loop (one at a time), the answer a CommandResult with its UplinkMeasurement."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from agent.uplink import fetch, refusal, url_for
from protos.schoolfleet.v1 import agent_pb2
from wire.mapping import timestamp

log = logging.getLogger(__name__)
Status = agent_pb2.CommandResult.Status


async def measure_uplink(
    command: agent_pb2.Command, controller: str, stop: threading.Event
) -> agent_pb2.CommandResult:
    """Carries out one MeasureUplink order; ``controller`` is the agent's HOST:PORT."""
    order = command.measure_uplink
    result = agent_pb2.CommandResult(command_id=command.command_id)
    why = refusal(order.port, order.path, order.bytes, order.timeout_seconds)
    if why is not None:
        result.status, result.message = Status.STATUS_FAILED, f"order refused: {why}"
    else:
        url = url_for(controller, order.port, order.path)
        transfer = await asyncio.to_thread(
            fetch, url, order.bytes, float(order.timeout_seconds), stop
        )
        if transfer.error or not transfer.received or transfer.seconds <= 0:
            result.status = Status.STATUS_FAILED
            result.message = f"uplink not measured: {transfer.error or 'nothing arrived'}"
        else:
            mbps = transfer.received * 8 / transfer.seconds / 1e6
            result.status = Status.STATUS_OK
            result.message = (
                f"{transfer.received} bytes in {transfer.seconds:.2f}s: {mbps:.1f} Mbit/s"
                + (" (stopped at the timeout)" if transfer.cut else "")
            )
            result.uplink.bytes = transfer.received
            result.uplink.seconds = transfer.seconds
    result.finished_at.CopyFrom(timestamp(time.time()))
    log.info(
        "uplink measured cmd=%s status=%s %s",
        command.command_id,
        Status.Name(result.status),
        result.message,
    )
    return result


class UplinkMeasurer:
    """Runs MeasureUplink orders as tasks, one at a time; hands each answer to ``answer``."""

    def __init__(self, controller: str, answer: Callable[[agent_pb2.CommandResult], None]) -> None:
        self._controller = controller
        self._answer = answer
        self._task: asyncio.Task[None] | None = None
        # Set at close: the transfer's thread stops within one read.
        self._stop = threading.Event()

    def order(self, command: agent_pb2.Command) -> None:
        """Starts the measurement; a second order while one runs is refused at once."""
        if self._task is not None and not self._task.done():
            self._answer(
                agent_pb2.CommandResult(
                    command_id=command.command_id,
                    status=Status.STATUS_FAILED,
                    message="another uplink measurement is running on this device",
                    finished_at=timestamp(time.time()),
                )
            )
            return

        async def run() -> None:
            self._answer(await measure_uplink(command, self._controller, self._stop))

        self._task = asyncio.create_task(run(), name=f"uplink {command.command_id}")

    def close(self) -> None:
        """Stops a measurement running (the agent is stopping): it is not answered."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
