"""The admin guard over a real gRPC server and store, as the one place that decides
who is calling, whether they may, and what the audit log says of it.

The handlers are a small service of this test's own (things that belong to schools),
wrapped with ``guarded`` like every AdminService handler; each answer is read as
schoolctl would get it, and the audit log from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from controller.api.guard import Call, Guard, guarded
from controller.people import access
from controller.people.access import Need
from controller.people.attempt_limits import FailureBudget
from controller.people.audit import appender
from controller.people.refusals import Refusals
from controller.stores import Stores, open_stores
from inventory.people import AuditEntry, AuditQuery, Outcome, Role, User
from protos.schoolfleet.v1 import admin_pb2

INSIDES = "sqlite3 said: /var/lib/schoolfleet/controller.db"
# The things of the test's service, and the school each belongs to.
THINGS = {"thing-a": "s1", "thing-b": "s2"}
MISSING = "no bearer token: run 'schoolctl login' (or set SCHOOLCTL_TOKEN)"
NOT_ACCEPTED = "the bearer token is not accepted (unknown, revoked or expired)"
OK = grpc.StatusCode.OK


def _schools(thing: str) -> list[str] | None:
    return [THINGS[thing]] if thing in THINGS else None


class Things:
    """Handlers of a service of the test's own; ``ran`` says which got past the guard."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.ran: list[str] = []

    @guarded("things.poke", Need.CHANGE, audited=True)
    async def Poke(
        self, request: admin_pb2.PingDeviceRequest, call: Call
    ) -> admin_pb2.PingDeviceResponse:
        call.target = request.device_id
        self.ran.append(call.action)
        call.allow_target(Need.CHANGE, _schools(request.device_id), f"thing {request.device_id!r}")
        call.done = "poked"
        return admin_pb2.PingDeviceResponse(command_id=f"poke:{request.device_id}")

    @guarded("things.look", Need.READ)
    async def Look(self, request: admin_pb2.GetDeviceRequest, call: Call) -> admin_pb2.Device:
        call.target = request.device_id
        self.ran.append(call.action)
        call.allow_target(Need.READ, _schools(request.device_id), f"thing {request.device_id!r}")
        return admin_pb2.Device(device_id=request.device_id, school_id=THINGS[request.device_id])

    @guarded("things.place", Need.CHANGE, audited=True)
    async def Place(
        self, request: admin_pb2.MoveDeviceRequest, call: Call
    ) -> admin_pb2.PingDeviceResponse:
        # A school the caller names themselves: call.allow, not an id's lookup.
        call.target = request.device_id
        self.ran.append(call.action)
        call.allow(Need.CHANGE, request.school_id)
        call.done = f"placed in {request.school_id}"
        return admin_pb2.PingDeviceResponse(command_id=f"place:{request.device_id}")

    @guarded("things.count", Need.CHANGE, audited=True)
    async def Count(
        self, request: admin_pb2.GetRolloutRequest, call: Call
    ) -> admin_pb2.PingDeviceResponse:
        self.ran.append(call.action)
        return admin_pb2.PingDeviceResponse(command_id=f"count:{request.rollout_id}")

    @guarded("things.purge", Need.ADMIN, audited=True)
    async def Purge(
        self, request: admin_pb2.WhoAmIRequest, call: Call
    ) -> admin_pb2.PingDeviceResponse:
        self.ran.append(call.action)
        return admin_pb2.PingDeviceResponse(command_id="purge")

    @guarded("things.break", Need.CHANGE, audited=True)
    async def Break(self, request: admin_pb2.WhoAmIRequest, call: Call) -> admin_pb2.User:
        call.target = "thing-1"
        raise KeyError(INSIDES)


# Each method's request and response types, for the generic handler and the client.
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "Poke": (admin_pb2.PingDeviceRequest, admin_pb2.PingDeviceResponse),
    "Look": (admin_pb2.GetDeviceRequest, admin_pb2.Device),
    "Place": (admin_pb2.MoveDeviceRequest, admin_pb2.PingDeviceResponse),
    "Count": (admin_pb2.GetRolloutRequest, admin_pb2.PingDeviceResponse),
    "Purge": (admin_pb2.WhoAmIRequest, admin_pb2.PingDeviceResponse),
    "Break": (admin_pb2.WhoAmIRequest, admin_pb2.User),
}


@dataclass(frozen=True)
class Answer:
    """What a client got: the status, its details, and the response on OK."""

    code: grpc.StatusCode
    details: str
    response: Message | None = None


@dataclass
class World:
    """The store with one user per kind of caller; ``tokens`` by user name."""

    store: Stores
    tokens: dict[str, str]

    def audit(self) -> list[AuditEntry]:
        """The audit log, oldest first."""
        return list(reversed(self.store.people.list_audit(AuditQuery(limit=100))))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = open_stores(f"sqlite:{tmp_path / 'c.db'}")
    now = time.time()
    users = [
        User("ana", Role.CENTRAL_OPS, (), now, "test"),
        User("sid", Role.SCHOOL_IT, ("s1",), now, "test"),
        User("vic", Role.VIEWER, (), now, "test"),
        User("rex", Role.SCHOOL_IT, ("s1",), now, "test"),
        User("eve", Role.CENTRAL_OPS, (), now - 7200, "test", expires_at=now - 3600),
    ]
    tokens = {}
    for user in users:
        tokens[user.name] = access.mint_token()
        assert store.people.add_user(user, access.hash_token(tokens[user.name]))
    assert store.people.revoke_user("rex", now) is not None
    try:
        yield World(store, tokens)
    finally:
        store.close()


class Client:
    """Calls the test's service as schoolctl would, with a bearer token or none."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    async def call(
        self,
        method: str,
        request: Message,
        token: str | None,
        *,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> Answer:
        """``metadata`` instead of the token's header: what schoolctl would not send."""
        response_type = METHODS[method][1]
        stub: Any = self._channel.unary_unary(
            f"/t.Admin/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        if metadata is None:
            metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        try:
            response = await stub(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")
        return Answer(OK, "", response)


@contextlib.asynccontextmanager
async def serving(service: Things) -> AsyncIterator[Client]:
    """The service on a gRPC server on loopback, port 0, and a client's channel to it."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(service, name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
        for name, (request, response) in METHODS.items()
    }
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Admin", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Client(channel)
    finally:
        await server.stop(None)


def _entry(e: AuditEntry) -> tuple[str, str, str, str, str, str]:
    return (e.actor, e.action, e.target, e.school_id, e.outcome.value, e.message)


def test_a_change_that_fails_unexpectedly_is_audited(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> Answer:
        with ThreadPoolExecutor(2) as executor:
            async with serving(Things(Guard(world.store.people, executor))) as client:
                return await client.call("Break", admin_pb2.WhoAmIRequest(), world.tokens["ana"])

    with caplog.at_level(logging.ERROR, "controller.api.guard"):
        answer = asyncio.run(scenario())
    assert answer.code == grpc.StatusCode.INTERNAL
    details = answer.details
    assert details.startswith("internal error (ref ") and INSIDES not in details
    [logged] = [r for r in caplog.records if r.exc_info]
    assert details.split("ref ")[1].split(")")[0] in logged.getMessage()
    entries = world.audit()
    assert [(e.actor, e.action, e.target, e.outcome.value) for e in entries] == [
        ("ana", "things.break", "thing-1", "failed")
    ]
    assert entries[0].message == details


@pytest.mark.parametrize(
    ("who", "metadata", "message"),
    [
        ("no token", (), MISSING),
        ("another scheme", (("authorization", "Basic YW5hOnB3"),), MISSING),
        ("an empty bearer", (("authorization", "Bearer  "),), MISSING),
        ("an unknown token", (("authorization", "Bearer sfu_not-one-of-ours"),), NOT_ACCEPTED),
        ("a revoked user", "rex", NOT_ACCEPTED),
        ("an expired user", "eve", NOT_ACCEPTED),
    ],
)
def test_a_caller_without_an_accepted_token_is_unauthenticated_and_audited(
    world: World, who: str, metadata: tuple[tuple[str, str], ...] | str, message: str
) -> None:
    # A user's name stands for their own token.
    headers = (
        (("authorization", f"Bearer {world.tokens[metadata]}"),)
        if isinstance(metadata, str)
        else metadata
    )
    denied: list[str] = []

    async def scenario(service: Things) -> Answer:
        async with serving(service) as client:
            request = admin_pb2.PingDeviceRequest(device_id="thing-a")
            return await client.call("Poke", request, None, metadata=headers)

    with ThreadPoolExecutor(2) as executor:
        service = Things(Guard(world.store.people, executor, denied.append))
        answer = asyncio.run(scenario(service))
    assert (answer.code, answer.details) == (grpc.StatusCode.UNAUTHENTICATED, message), who
    assert service.ran == [], "the handler never runs for an unknown caller"
    assert denied == ["things.poke"]
    [entry] = world.audit()
    assert _entry(entry) == ("-", "things.poke", "", "", "denied", message)
    assert entry.peer.startswith("ipv4:127.0.0.1:")


def test_a_source_that_keeps_presenting_bad_tokens_is_limited_and_a_good_token_served(
    world: World,
) -> None:
    now = 1_800_000_000.0
    request = admin_pb2.PingDeviceRequest(device_id="thing-a")

    async def scenario(executor: ThreadPoolExecutor) -> list[Answer]:
        refusals = Refusals(
            appender(world.store.people, executor),
            FailureBudget(per_minute=10, burst=2),
            now=lambda: now,
        )
        service = Things(Guard(world.store.people, executor, refusals=refusals))
        async with serving(service) as client:
            answers = [await client.call("Poke", request, "sfu_wrong") for _ in range(4)]
            # The source's budget is spent, but another person behind the same address
            # (a NAT, the load balancer) with a good token is served.
            answers.append(await client.call("Poke", request, world.tokens["ana"]))
            answers.append(await client.call("Poke", request, None))
        return answers

    with ThreadPoolExecutor(2) as executor:
        answers = asyncio.run(scenario(executor))
    busy = "too many refused attempts from 127.0.0.1: try again in 6 s"
    assert [(a.code, a.details) for a in answers] == [
        (grpc.StatusCode.UNAUTHENTICATED, NOT_ACCEPTED),
        (grpc.StatusCode.UNAUTHENTICATED, NOT_ACCEPTED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, busy),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, busy),
        (grpc.StatusCode.OK, ""),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, busy),
    ]
    # Two refusals audited; the busy answers folded into one entry of the source; the
    # good token's change audited as ever.
    assert [_entry(e) for e in world.audit()] == [
        ("-", "things.poke", "", "", "denied", NOT_ACCEPTED),
        ("-", "things.poke", "", "", "denied", NOT_ACCEPTED),
        ("-", "sign-in", "", "", "denied", busy),
        ("ana", "things.poke", "thing-a", "s1", "ok", "poked"),
    ]


@pytest.mark.parametrize(
    ("user", "method", "request_", "message"),
    [
        (
            "vic",
            "Poke",
            admin_pb2.PingDeviceRequest(device_id="thing-a"),
            "user vic (viewer) may not things.poke: a viewer only reads",
        ),
        (
            "sid",
            "Purge",
            admin_pb2.WhoAmIRequest(),
            "user sid (school-it) may not things.purge: only central-ops may",
        ),
        (
            "vic",
            "Count",
            # Out of range too: the role is refused first, and that is the answer.
            admin_pb2.GetRolloutRequest(rollout_id=2**64 - 1),
            "user vic (viewer) may not things.count: a viewer only reads",
        ),
    ],
)
def test_a_role_that_may_not_is_denied_before_the_handler_runs_and_audited(
    world: World, user: str, method: str, request_: Message, message: str
) -> None:
    denied: list[str] = []

    async def scenario(service: Things) -> Answer:
        async with serving(service) as client:
            return await client.call(method, request_, world.tokens[user])

    with ThreadPoolExecutor(2) as executor:
        service = Things(Guard(world.store.people, executor, denied.append))
        answer = asyncio.run(scenario(service))
    assert (answer.code, answer.details) == (grpc.StatusCode.PERMISSION_DENIED, message)
    assert service.ran == []
    action = f"things.{method.lower()}"
    assert denied == [action]
    assert [_entry(e) for e in world.audit()] == [(user, action, "", "", "denied", message)]


def test_another_school_s_thing_is_answered_like_one_that_does_not_exist(world: World) -> None:
    async def scenario(service: Things) -> list[Answer]:
        async with serving(service) as client:
            return [
                await client.call(method, request, world.tokens[user])
                for user, method, request in (
                    ("sid", "Poke", admin_pb2.PingDeviceRequest(device_id="thing-b")),
                    ("sid", "Poke", admin_pb2.PingDeviceRequest(device_id="thing-z")),
                    ("sid", "Look", admin_pb2.GetDeviceRequest(device_id="thing-b")),
                    ("sid", "Look", admin_pb2.GetDeviceRequest(device_id="thing-z")),
                    # Central ops see every school: a plain "no such thing".
                    ("ana", "Poke", admin_pb2.PingDeviceRequest(device_id="thing-z")),
                    # Their own school's thing: done.
                    ("sid", "Poke", admin_pb2.PingDeviceRequest(device_id="thing-a")),
                )
            ]

    with ThreadPoolExecutor(2) as executor:
        answers = asyncio.run(scenario(Things(Guard(world.store.people, executor))))
    not_found = grpc.StatusCode.NOT_FOUND
    assert [(a.code, a.details) for a in answers] == [
        (not_found, "no thing 'thing-b' in your schools"),
        (not_found, "no thing 'thing-z' in your schools"),
        (not_found, "no thing 'thing-b' in your schools"),
        (not_found, "no thing 'thing-z' in your schools"),
        (not_found, "no thing 'thing-z'"),
        (OK, ""),
    ]
    assert answers[-1].response == admin_pb2.PingDeviceResponse(command_id="poke:thing-a")
    # Both hidden answers are audited as denied, reads too; the other school is kept
    # in the entry for central ops, who can read it.
    assert [_entry(e) for e in world.audit()] == [
        ("sid", "things.poke", "thing-b", "s2", "denied", "no thing 'thing-b' in your schools"),
        ("sid", "things.poke", "thing-z", "", "denied", "no thing 'thing-z' in your schools"),
        ("sid", "things.look", "thing-b", "s2", "denied", "no thing 'thing-b' in your schools"),
        ("sid", "things.look", "thing-z", "", "denied", "no thing 'thing-z' in your schools"),
        ("ana", "things.poke", "thing-z", "", "failed", "no thing 'thing-z'"),
        ("sid", "things.poke", "thing-a", "s1", "ok", "poked"),
    ]


def test_a_school_the_caller_names_outside_their_schools_is_denied_and_audited(
    world: World,
) -> None:
    async def scenario(service: Things) -> list[Answer]:
        async with serving(service) as client:
            return [
                await client.call(
                    "Place", admin_pb2.MoveDeviceRequest(device_id="new-1", school_id=school), token
                )
                for school, token in (("s2", world.tokens["sid"]), ("s1", world.tokens["sid"]))
            ]

    with ThreadPoolExecutor(2) as executor:
        answers = asyncio.run(scenario(Things(Guard(world.store.people, executor))))
    denied = "user sid (school-it) may not things.place in school s2: their schools are s1"
    assert [(a.code, a.details) for a in answers] == [
        (grpc.StatusCode.PERMISSION_DENIED, denied),
        (OK, ""),
    ]
    assert [_entry(e) for e in world.audit()] == [
        ("sid", "things.place", "new-1", "s2", "denied", denied),
        ("sid", "things.place", "new-1", "s1", "ok", "placed in s1"),
    ]


def test_a_number_out_of_range_is_refused_after_the_caller_is_known(world: World) -> None:
    too_big = 2**64 - 1
    request = admin_pb2.GetRolloutRequest(rollout_id=too_big)

    async def scenario(service: Things) -> list[Answer]:
        async with serving(service) as client:
            return [
                await client.call("Count", request, None),
                await client.call("Count", request, world.tokens["ana"]),
                await client.call(
                    "Count", admin_pb2.GetRolloutRequest(rollout_id=2**63 - 1), world.tokens["ana"]
                ),
            ]

    with ThreadPoolExecutor(2) as executor:
        service = Things(Guard(world.store.people, executor))
        answers = asyncio.run(scenario(service))
    why = f"GetRolloutRequest.rollout_id {too_big} is out of range (at most {2**63 - 1})"
    assert [(a.code, a.details) for a in answers] == [
        (grpc.StatusCode.UNAUTHENTICATED, MISSING),
        (grpc.StatusCode.INVALID_ARGUMENT, why),
        (OK, ""),
    ]
    assert service.ran == ["things.count"], "only the call in range reached the handler"
    assert [_entry(e) for e in world.audit()] == [
        ("-", "things.count", "", "", "denied", MISSING),
        ("ana", "things.count", "", "", "failed", why),
        ("ana", "things.count", "", "", "ok", ""),
    ]


def test_a_change_is_audited_once_and_a_read_not_at_all(world: World) -> None:
    async def scenario(service: Things) -> list[Answer]:
        async with serving(service) as client:
            return [
                await client.call(
                    "Look", admin_pb2.GetDeviceRequest(device_id="thing-b"), world.tokens["vic"]
                ),
                await client.call(
                    "Look", admin_pb2.GetDeviceRequest(device_id="thing-a"), world.tokens["sid"]
                ),
                await client.call(
                    "Poke", admin_pb2.PingDeviceRequest(device_id="thing-b"), world.tokens["ana"]
                ),
            ]

    with ThreadPoolExecutor(2) as executor:
        service = Things(Guard(world.store.people, executor))
        before = time.time()
        answers = asyncio.run(scenario(service))
        after = time.time()
    assert [(a.code, a.response) for a in answers] == [
        (OK, admin_pb2.Device(device_id="thing-b", school_id="s2")),
        (OK, admin_pb2.Device(device_id="thing-a", school_id="s1")),
        (OK, admin_pb2.PingDeviceResponse(command_id="poke:thing-b")),
    ]
    assert service.ran == ["things.look", "things.look", "things.poke"]
    [entry] = world.audit()
    assert _entry(entry) == ("ana", "things.poke", "thing-b", "s2", "ok", "poked")
    assert entry.outcome is Outcome.OK
    assert before <= entry.at <= after
    assert entry.peer.startswith("ipv4:127.0.0.1:")
