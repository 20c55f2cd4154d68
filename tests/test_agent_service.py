"""AgentService in-process: assembled as controller/server.py assembles it (real stores
on SQLite, the session registry, the ingest writer and the acks) on a gRPC server on
loopback, and device streams opened from the same process (tests/agent_service_rig.py).

What a device would see (its Welcome, acks, commands, the status that ends its stream)
and what the store and the session registry hold are asserted; the agent itself is
left to the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from cryptography import x509

from controller.api.lesson_orders import launch_command
from controller.enroll.pki import load_ca
from controller.lessons.dispatcher import launch_order
from controller.lessons.store import OutboxCommand
from inventory.lessons import Lesson
from inventory.model import DeviceStatus, Enrollment, EnrollToken
from protos.schoolfleet.v1 import agent_pb2
from tests.agent_service_rig import (
    SCHOOL,
    DeviceStream,
    Running,
    ack,
    open_channel,
    serving,
    until,
    welcomed,
)
from tests.hostile_pki import KeyCert, device_cert
from tests.raw_stream import heartbeat, hello

DENIED = grpc.StatusCode.PERMISSION_DENIED


def test_a_heartbeat_is_stored_and_acked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as run, open_channel(run) as channel:
            stream = DeviceStream(channel)
            before = time.time()
            assert await welcomed(stream, "panel-1") == 0
            stream.send(heartbeat(1, cpu=12.5))
            assert await stream.next() == ack(1)
            record = run.device("panel-1")
            assert record is not None and record.health is not None
            assert (record.identity.school_id, record.identity.room_id) == (SCHOOL, "r1")
            assert (record.last_seq, record.heartbeats_stored, record.seq_gaps) == (1, 1, 0)
            health = record.health
            assert (health.cpu_percent, health.memory_percent, health.disk_percent) == (
                12.5,
                10,
                20,
            )
            assert record.last_heartbeat is not None
            assert before <= record.last_heartbeat <= time.time()
            assert (record.stream_up, record.status) == (True, DeviceStatus.ONLINE)
            stream.close_sending()
            assert await stream.status() == (grpc.StatusCode.OK, "")

    asyncio.run(scenario())


def test_a_replayed_heartbeat_is_acked_and_not_stored_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as run, open_channel(run) as channel:
            first = DeviceStream(channel)
            await welcomed(first, "panel-1")
            for seq in (1, 2):
                first.send(heartbeat(seq, cpu=10.0 + seq))
                assert await first.next() == ack(seq)
            first.close_sending()
            assert await first.status() == (grpc.StatusCode.OK, "")
            # The device's spool replays what it holds: the stream's Welcome says what
            # is stored, and a replay is acked again but stored once.
            second = DeviceStream(channel)
            assert await welcomed(second, "panel-1") == 2
            second.send(heartbeat(2, cpu=99.0))
            assert await second.next() == ack(2)
            replayed = run.device("panel-1")
            assert replayed is not None and replayed.health is not None
            assert (replayed.last_seq, replayed.heartbeats_stored) == (2, 2)
            assert replayed.health.cpu_percent == 12.0, "the replay changed the stored row"
            second.send(heartbeat(3, cpu=13.0))
            assert await second.next() == ack(3)
            second.send(heartbeat(3, cpu=99.0))
            assert await second.next() == ack(3)
            record = run.device("panel-1")
            assert record is not None and record.health is not None
            assert (record.last_seq, record.heartbeats_stored, record.seq_gaps) == (3, 3, 0)
            assert record.health.cpu_percent == 13.0
            second.close_sending()
            assert await second.status() == (grpc.StatusCode.OK, "")

    asyncio.run(scenario())


def test_a_decommissioned_device_is_refused_its_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as run, open_channel(run) as channel:
            stream = DeviceStream(channel)
            await welcomed(stream, "panel-1")
            stream.close_sending()
            assert await stream.status() == (grpc.StatusCode.OK, "")
            assert run.stores.enrollments.decommission("panel-1", time.time()) is not None
            again = DeviceStream(channel)
            again.send(hello("panel-1"))
            assert await again.status() == (
                DENIED,
                "device panel-1 is decommissioned; it must be allowed to re-enroll and enroll",
            )
            assert run.sessions.get("panel-1") is None
            assert run.closed("decommissioned") == 1
            record = run.device("panel-1")
            assert record is not None and not record.stream_up
            # A stream must begin with Hello; one that does not is refused.
            nameless = DeviceStream(channel)
            nameless.send(heartbeat(1))
            assert await nameless.status() == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message on a stream must be Hello",
            )
            assert len(run.sessions) == 0

    asyncio.run(scenario())


def _enroll(run: Running, device_id: str, client: KeyCert) -> None:
    """Records the device's enrollment as Enroll would, for ``client``'s certificate."""
    cert = x509.load_pem_x509_certificate(client.cert)
    now = time.time()
    token = EnrollToken(f"tok-{device_id}", SCHOOL, 1, 0, now + 3600, now)
    secret = f"secret-{device_id}".encode()
    run.stores.enrollments.add_enroll_token(token, secret)
    enrollment = Enrollment(
        device_id,
        SCHOOL,
        f"{cert.serial_number:x}",
        cert.not_valid_after_utc.timestamp(),
        now,
        token.token_id,
    )
    run.stores.enrollments.enroll(secret, enrollment, now)


def test_with_mutual_tls_a_device_is_who_its_enrolled_certificate_says(tmp_path: Path) -> None:
    async def refused(run: Running, client: KeyCert, claims: str) -> tuple[grpc.StatusCode, str]:
        async with open_channel(run, client) as channel:
            stream = DeviceStream(channel)
            stream.send(hello(claims))
            return await stream.status()

    async def scenario() -> None:
        async with serving(tmp_path, agent_tls=True) as run:
            ca = load_ca(tmp_path / "pki")
            enrolled, stranger = (
                device_cert(ca, "panel-1", SCHOOL),
                device_cert(ca, "panel-2", SCHOOL),
            )
            _enroll(run, "panel-1", enrolled)
            # Signed by the CA, but no enrollment stands behind it.
            assert await refused(run, stranger, "panel-2") == (
                DENIED,
                "device panel-2 is not enrolled; it must enroll with a token of its school",
            )
            assert await refused(run, enrolled, "panel-3") == (
                DENIED,
                "the certificate is for device panel-1, Hello says panel-3",
            )
            # The wrong identity is counted as unauthenticated, though answered DENIED.
            assert (run.closed("not_enrolled"), run.closed("unauthenticated")) == (1, 1)
            assert len(run.sessions) == 0
            assert run.device("panel-2") is None and run.device("panel-3") is None
            # The enrolled device is taken, in its certificate's school whatever it claims.
            async with open_channel(run, enrolled) as channel:
                stream = DeviceStream(channel)
                assert await welcomed(stream, "panel-1", school_id="school-other") == 0
                record = run.device("panel-1")
                assert record is not None and record.identity.school_id == SCHOOL
                stream.close_sending()
                assert await stream.status() == (grpc.StatusCode.OK, "")

    asyncio.run(scenario())


def test_a_command_waiting_in_the_outbox_is_delivered_when_the_device_connects(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as run, open_channel(run) as channel:
            now = time.time()
            lesson = Lesson(
                SCHOOL, "r1", now + 60, now + 2700, "7B", "maths", "T", "https://x/l", False
            )
            past = Lesson(
                SCHOOL, "r1", now - 3600, now - 60, "7A", "maths", "T", "https://x/p", False
            )
            run.stores.lessons.save_lessons([lesson, past], now - 7200)
            orders = [launch_order(a, "panel-1", now - 7200) for a in (lesson, past)]
            plan = [
                (
                    o.lesson_id,
                    [
                        OutboxCommand(
                            o.command_id,
                            "panel-1",
                            o.lesson_id,
                            launch_command(o).SerializeToString(),
                            o.ends_at,
                        )
                    ],
                )
                for o in orders
            ]
            assert len(run.stores.lessons.dispatch(plan, now - 7200)) == 2
            stream = DeviceStream(channel)
            await welcomed(stream, "panel-1")
            # The lesson still to come, after the Welcome; the one that ended is not sent.
            assert await stream.next() == agent_pb2.ControllerMessage(
                command=launch_command(orders[0])
            )
            stream.send(heartbeat(1))
            assert await stream.next() == ack(1), "nothing else was queued before the ack"
            stream.close_sending()
            assert await stream.status() == (grpc.StatusCode.OK, "")

    asyncio.run(scenario())


def test_the_session_registry_holds_a_device_while_its_stream_is_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as run, open_channel(run) as channel:
            assert run.sessions.get("panel-1") is None
            first = DeviceStream(channel)
            await welcomed(first, "panel-1")
            session = run.sessions.get("panel-1")
            assert session is not None and len(run.sessions) == 1
            record = run.device("panel-1")
            assert record is not None and record.stream_up
            # The newest stream wins; the older one is told why it ends.
            second = DeviceStream(channel)
            await welcomed(second, "panel-1")
            assert await first.status() == (
                grpc.StatusCode.ABORTED,
                "replaced by a newer stream from device panel-1",
            )
            newer = run.sessions.get("panel-1")
            assert newer is not None and newer.stream_id > session.stream_id
            assert len(run.sessions) == 1
            record = run.device("panel-1")
            assert record is not None and record.stream_up, "the old stream's end took it down"
            second.close_sending()
            assert await second.status() == (grpc.StatusCode.OK, "")
            await until(lambda: run.sessions.get("panel-1") is None, "the session released")
            assert len(run.sessions) == 0
            await until(
                lambda: not getattr(run.device("panel-1"), "stream_up", True), "stream down"
            )
            assert run.closed("replaced") == 1 and run.closed("agent_closed") == 1

    asyncio.run(scenario())
