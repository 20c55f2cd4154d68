"""Hostile or broken streams end with a status and a log line; nobody else notices."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from protos.schoolfleet.v1 import agent_pb2
from tests.procs import Agent, Controller, schoolctl, wait_until
from tests.raw_stream import RawStream, heartbeat, hello

pytestmark = pytest.mark.e2e


def _agent_seq(controller: Controller, device_id: str) -> int:
    result = schoolctl(controller.address, "devices", "show", device_id, "--json")
    return int(result.json()["last_seq"]) if result.code == 0 else 0


def _with_report(
    message: agent_pb2.AgentMessage, condition: int = 1, reasons: list[str] | None = None
) -> agent_pb2.AgentMessage:
    message.heartbeat.condition = condition  # type: ignore[assignment]
    message.heartbeat.reasons.extend(reasons or [])
    return message


def test_bad_streams_are_closed_and_others_go_on(
    controller: Controller, agents: list[Agent], tmp_path: Path
) -> None:
    good = Agent(tmp_path, "panel-good", "panel", "school-1", "r1", controller.address).start()
    agents.append(good)
    wait_until(lambda: _agent_seq(controller, "panel-good") > 0, 20, "the good agent reporting")

    cases: list[tuple[str, list[bytes | object], grpc.StatusCode, str]] = [
        (
            "garbage bytes",
            [b"\xff\xfe\x00garbage\x07"],
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid schoolfleet.v1.AgentMessage",
        ),
        (
            "garbage after Hello",
            [hello("panel-v"), b"\xff\xff\xff"],
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid schoolfleet.v1.AgentMessage",
        ),
        (
            "no Hello first",
            [heartbeat(1)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "first message on a stream must be Hello",
        ),
        (
            "bad device id",
            [hello("bad id with spaces")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Hello.device_id",
        ),
        (
            "oversized message",
            [hello("panel-x"), b"\x0a" + b"\xff" * 200_000],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
        (
            "NaN cpu",
            [hello("panel-y"), heartbeat(1, cpu=float("nan"))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Health.cpu_percent nan is out of range",
        ),
        (
            "Hello twice",
            [hello("panel-z"), hello("panel-z")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Hello may only be sent once",
        ),
        (
            "seq zero",
            [hello("panel-w"), heartbeat(0)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "AgentMessage.seq must be above 0",
        ),
        (
            "unknown condition",
            [hello("panel-u"), _with_report(heartbeat(1), condition=99)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Heartbeat.condition 99 is not a known condition",
        ),
        (
            "a flood of reasons",
            [hello("panel-r"), _with_report(heartbeat(1), reasons=["disk"] * 500)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Heartbeat.reasons has more than 32 entries",
        ),
        (
            "unknown command result status",
            [
                hello("panel-c"),
                agent_pb2.AgentMessage(
                    seq=1,
                    command_result=agent_pb2.CommandResult(command_id="x", status=7),  # type: ignore[arg-type]
                ),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "CommandResult.status 7 is not a known status",
        ),
    ]
    for name, messages, code, detail in cases:
        with RawStream(controller.address) as stream:
            for message in messages:
                stream.send(message)  # type: ignore[arg-type]
            got_code, got_detail = stream.status()
        assert got_code == code, f"{name}: {got_code} {got_detail}"
        assert detail in got_detail, f"{name}: {got_detail!r}"

    # The controller is up, the good agent kept reporting, its stream never dropped.
    before = _agent_seq(controller, "panel-good")
    wait_until(lambda: _agent_seq(controller, "panel-good") > before, 10, "good agent goes on")
    log = controller.log_text()
    assert log.count("stream open device=panel-good") == 1
    assert "stream refused" in log and "reason=protocol_error" in log
    assert "Traceback" not in log
    # Every refused or closed stream left a line saying why.
    assert log.count("stream refused") + log.count("reason=protocol_error") == len(cases)
    assert schoolctl(controller.address, "status").code == 0


def test_second_stream_replaces_the_first(controller: Controller) -> None:
    with RawStream(controller.address) as first:
        first.send(hello("panel-dup"))
        assert first.next().WhichOneof("body") == "welcome"
        first.send(heartbeat(1))
        assert first.next().ack.seq == 1
        with RawStream(controller.address) as second:
            second.send(hello("panel-dup"))
            welcome = second.next().welcome
            # The new stream learns what is stored, so it goes on from there.
            assert welcome.last_stored_seq == 1
            code, detail = first.status()
            assert code == grpc.StatusCode.ABORTED
            assert "replaced by a newer stream" in detail
            second.send(heartbeat(2))
            assert second.next().ack.seq == 2
            shown = schoolctl(controller.address, "devices", "show", "panel-dup", "--json").json()
            # The replaced stream's end must not mark the live one down.
            assert shown["stream_up"] is True and shown["status"] == "online"


def test_shutdown_stores_what_is_queued(tmp_path: Path) -> None:
    # A long flush interval keeps heartbeats queued when the stop comes.
    controller = Controller(tmp_path, env={"SCHOOLFLEET_CONTROLLER_FLUSH_INTERVAL": "3"})
    controller.start()
    try:
        with RawStream(controller.address) as stream:
            stream.send(hello("panel-q"))
            stream.next()
            for seq in range(1, 6):
                stream.send(heartbeat(seq))
            wait_until(
                lambda: controller.metrics().get("schoolfleet_heartbeats_received_total") == 5,
                10,
                "five heartbeats received",
            )
            assert controller.metrics()["schoolfleet_heartbeats_stored_total"] == 0
            assert controller.stop() == 0
    finally:
        controller.stop()
    with sqlite3.connect(controller.database) as db:
        (last_seq,) = db.execute(
            "SELECT last_seq FROM devices WHERE device_id = 'panel-q'"
        ).fetchone()
    assert last_seq == 5
