"""A city of two schools for attacks on the admin API, and raw calls to any of its methods.

``start_city`` runs a lab controller with school ``sch-a`` (its school-it user is
the attacker) and school ``sch-zeta`` (the victim). Everything of the victim's
school carries "zeta" in its ids: devices, enrollment tokens, lessons, rollouts,
access points, servers, uplink checks, maintenance windows and audit entries. An
answer that contains "zeta" shows the attacker something of another school.

``admin_methods`` lists AdminService's methods from its descriptor, so that a
method added later is attacked too; ``call`` sends any request to any of them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from controller.rollouts.store import NewHost
from controller.stores import open_stores
from inventory.rollouts import LessonRates, RolloutSpec, RolloutState
from inventory.uplink import UplinkCheck
from protos.schoolfleet.v1 import admin_pb2
from tests.hostile_wire import CLIENT_OPTIONS, status_of
from tests.procs import Controller, wait_until
from tests.raw_stream import RawStream, hello
from wire.mapping import timestamp

OURS, THEIRS = "sch-a", "sch-zeta"
MARK = "zeta"
SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]


def admin_methods() -> list[MethodDescriptor]:
    """Every method of AdminService, from its descriptor."""
    return list(SERVICE.methods)


def request_of(method: MethodDescriptor) -> Message:
    """An empty request of ``method``'s input type."""
    return message_factory.GetMessageClass(method.input_type)()


@dataclass(frozen=True)
class Answer:
    """What a call answered: its status, its details and the response (None unless OK)."""

    code: grpc.StatusCode
    details: str
    response: Message | None

    def shape(self, *ids: str) -> tuple[grpc.StatusCode, str]:
        """The code and the details with each of ``ids`` replaced by ``ID``."""
        details = self.details
        for i in ids:
            details = details.replace(i, "ID")
        return self.code, details


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message, token: str) -> Answer:
    """Calls ``method`` with ``request`` as the bearer of ``token``."""
    reply = message_factory.GetMessageClass(method.output_type)
    stub: grpc.UnaryUnaryMultiCallable[Message, Message] = channel.unary_unary(
        f"/{SERVICE.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=reply.FromString,
    )
    try:
        response = stub(request, metadata=(("authorization", f"Bearer {token}"),), timeout=20)
    except grpc.RpcError as exc:
        return Answer(*status_of(exc), None)
    return Answer(grpc.StatusCode.OK, "", response)


def audit_rows(database: Path) -> list[tuple[str, str, str, str, str, str]]:
    """Every audit entry: actor, action, target, school, outcome, message (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT actor, action, target, school_id, outcome, message FROM audit ORDER BY entry_id"
        ).fetchall()
    return [tuple(str(v) for v in r) for r in rows]  # type: ignore[misc]


@dataclass
class City:
    """The controller, a channel to it, and the tokens of its users."""

    controller: Controller
    channel: grpc.Channel
    ops: str
    it: str
    # Ids of the victim school's things, by kind: what the attacker must never see.
    theirs: dict[str, str]
    ours: dict[str, str]

    def call(self, name: str, request: Message | None = None, token: str | None = None) -> Answer:
        method = SERVICE.methods_by_name[name]
        return call(self.channel, method, request or request_of(method), token or self.it)

    def ok(self, name: str, request: Message, token: str | None = None) -> Message:
        answer = self.call(name, request, token or self.ops)
        assert answer.code == grpc.StatusCode.OK and answer.response is not None, (name, answer)
        return answer.response


def _inventory(school: str, tag: str) -> list[admin_pb2.InventoryItem]:
    n = "1" if tag == "a" else "2"
    return [
        admin_pb2.InventoryItem(line=1, school=admin_pb2.InventorySchool(school_id=school)),
        admin_pb2.InventoryItem(
            line=2, room=admin_pb2.InventoryRoom(school_id=school, room_id="r1")
        ),
        admin_pb2.InventoryItem(
            line=3,
            access_point=admin_pb2.InventoryAccessPoint(
                ap_id=f"ap-{tag}-1",
                school_id=school,
                room_id="r1",
                bssids=[f"02:00:00:00:0{n}:01"],
                address="198.18.9.1",
            ),
        ),
        admin_pb2.InventoryItem(
            line=4,
            server=admin_pb2.InventoryServer(
                server_id=f"srv-{tag}-1", school_id=school, address="198.18.9.2"
            ),
        ),
    ]


def _seed_store(database: Path, now: float) -> tuple[int, int, int]:
    """Rollouts (ours alone, theirs alone, both schools) and each school's uplink check,
    put in the store as the engine and the checks would (finished, so nothing runs)."""
    store = open_stores(f"sqlite:{database}")
    ids = []
    try:
        for hosts in (
            [NewHost("dev-a-1", OURS)],
            [NewHost("dev-zeta-1", THEIRS)],
            [NewHost("dev-a-2", OURS), NewHost("dev-zeta-2", THEIRS)],
        ):
            spec = RolloutSpec(
                playbook="timesync.yml",
                selector=f"devices {','.join(h.device_id for h in hosts)}",
                extra_vars={"sf_secret_of": [h.device_id for h in hosts]},
                gate_lessons=False,
            )
            rollout_id = store.rollouts.create_rollout(spec, hosts, "ops", now, LessonRates(0, 0))
            store.rollouts.set_rollout_state(rollout_id, RolloutState.ABORTED, "seeded", now)
            ids.append(rollout_id)
        for school, device in ((OURS, "dev-a-1"), (THEIRS, "dev-zeta-1")):
            check = UplinkCheck(school_id=school, started_at=now - 5, device_id=device, bytes=10**6)
            store.uplink.start_uplink_check(check, now - 60)
            store.uplink.finish_uplink_check(school, now - 5, 10**6, 1.0, 8.0, "")
    finally:
        store.close()
    return ids[0], ids[1], ids[2]


@contextlib.contextmanager
def start_city(tmp: Path, env: dict[str, str] | None = None) -> Iterator[City]:
    """A lab controller with both schools' things in it; stopped after."""
    controller = Controller(
        tmp, env={"SCHOOLFLEET_CONTROLLER_CONTENT_HOSTS": '["lessons.example"]', **(env or {})}
    )
    controller.start()
    it = controller.create_user("it-a", "school-it", OURS).token
    channel = grpc.insecure_channel(controller.address, options=CLIENT_OPTIONS)
    streams: list[RawStream] = []
    try:
        city = City(controller, channel, controller.admin_token, it, {}, {})
        for device, school in (
            ("dev-a-1", OURS),
            ("dev-a-2", OURS),
            ("dev-zeta-1", THEIRS),
            ("dev-zeta-2", THEIRS),
        ):
            stream = RawStream(controller.address)
            streams.append(stream)
            stream.send(hello(device, school))
        listed = admin_pb2.ListDevicesResponse

        def all_four() -> bool:
            found = city.ok("ListDevices", admin_pb2.ListDevicesRequest())
            assert isinstance(found, listed)
            return len(found.devices) == 4

        wait_until(all_four, 20, "four devices connected")
        for school, tag in ((OURS, "a"), (THEIRS, "zeta")):
            city.ok(
                "ImportInventory",
                admin_pb2.ImportInventoryRequest(
                    source=f"{tag}.csv", items=_inventory(school, tag)
                ),
            )
            token = city.ok(
                "CreateEnrollToken", admin_pb2.CreateEnrollTokenRequest(school_id=school)
            )
            assert isinstance(token, admin_pb2.CreateEnrollTokenResponse)
            (city.ours if tag == "a" else city.theirs)["token"] = token.token.token_id
            city.ok(
                "SetMaintenanceWindows",
                admin_pb2.SetMaintenanceWindowsRequest(
                    school_id=school, windows=["mon 22:00-23:00"]
                ),
            )
            now = time.time()
            city.ok(
                "ImportLessons",
                admin_pb2.ImportLessonsRequest(
                    source=f"{tag}-lessons.csv",
                    lessons=[
                        admin_pb2.ScheduledLesson(
                            line=1,
                            school_id=school,
                            room_id="r1",
                            starts_at=timestamp(now + 600),
                            ends_at=timestamp(now + 1200),
                            class_name=f"class-{tag}",
                            subject=f"subject-{tag}",
                            content_url=f"https://lessons.example/{tag}",
                        )
                    ],
                ),
            )
        mine, theirs, both = _seed_store(controller.database, time.time())
        city.ours.update(device="dev-a-1", rollout=str(mine), server="srv-a-1")
        city.theirs.update(device="dev-zeta-1", rollout=str(theirs), server="srv-zeta-1")
        city.theirs["shared rollout"] = str(both)
        yield city
    finally:
        for stream in streams:
            with contextlib.suppress(Exception):
                stream.close_sending()
        channel.close()
        controller.stop()
