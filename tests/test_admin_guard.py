"""The admin guard over a real gRPC server and store: an unexpected failure of a change
is answered INTERNAL without internals, logged once, and audited like any outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.api.guard import Call, Guard, guarded
from controller.people import access
from controller.people.access import Need
from controller.stores import open_stores
from inventory.people import AuditQuery, Role, User
from protos.schoolfleet.v1 import admin_pb2

INSIDES = "sqlite3 said: /var/lib/schoolfleet/controller.db"


class Breaking:
    """A handler with a bug: it fails with an exception nobody expected."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    @guarded("things.break", Need.CHANGE, audited=True)
    async def Break(self, request: admin_pb2.WhoAmIRequest, call: Call) -> admin_pb2.User:
        call.target = "thing-1"
        raise KeyError(INSIDES)


async def _call(tmp: Path, token: str) -> tuple[grpc.StatusCode, str]:
    store = open_stores(f"sqlite:{tmp / 'c.db'}")
    user = User("ana", Role.CENTRAL_OPS, (), time.time(), "test")
    store.people.add_user(user, access.hash_token(token))
    with ThreadPoolExecutor(2) as executor:
        service = Breaking(Guard(store.people, executor))
        handler = grpc.unary_unary_rpc_method_handler(
            service.Break,
            request_deserializer=admin_pb2.WhoAmIRequest.FromString,
            response_serializer=admin_pb2.User.SerializeToString,
        )
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Admin", {"Break": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                method: Any = channel.unary_unary("/t.Admin/Break")
                try:
                    await method(b"", metadata=(("authorization", f"Bearer {token}"),))
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details() or ""
        finally:
            await server.stop(None)
            entries = store.people.list_audit(AuditQuery(limit=10))
            store.close()
            assert [(e.actor, e.action, e.target, e.outcome.value) for e in entries] == [
                ("ana", "things.break", "thing-1", "failed")
            ]
            assert entries[0].message.startswith("internal error (ref ")
    raise AssertionError("the call succeeded")


def test_a_change_that_fails_unexpectedly_is_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "controller.api.guard"):
        code, details = asyncio.run(_call(tmp_path, access.mint_token()))
    assert code == grpc.StatusCode.INTERNAL
    assert details.startswith("internal error (ref ") and INSIDES not in details
    [logged] = [r for r in caplog.records if r.exc_info]
    assert details.split("ref ")[1].split(")")[0] in logged.getMessage()
