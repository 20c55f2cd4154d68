"""No secret reaches the controller's log or its audit, however a client mangles it.

Bearer tokens and enrollment tokens, each with a mark of its own, are sent every
way a hostile client can: wrong, revoked, with bytes that are not UTF-8, with
control characters and NULs, 9 KB long, without the "Bearer" word, twice, and
through HTTP/2 written by hand (gRPC's clients refuse to send most of these). Then
the log and the audit table are searched for every mark.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.schoolfleet.v1 import admin_pb2, agent_pb2
from tests.hostile_admin import SERVICE, call
from tests.hostile_pki import csr_pem
from tests.hostile_wire import CLIENT_OPTIONS, ENROLL, length_delimited, raw_h2_call, unary
from tests.procs import Controller, schoolctl

pytestmark = pytest.mark.e2e

WHOAMI = "/schoolfleet.v1.AdminService/WhoAmI"


def _mark() -> str:
    return "MARK" + secrets.token_hex(8)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    c = Controller(tmp_path)
    try:
        yield c.start()
    finally:
        c.stop()


def test_no_hostile_token_reaches_the_log_or_the_audit(controller: Controller) -> None:
    marks: list[str] = []

    def new(prefix: str = "sfu_abcdefgh") -> str:
        marks.append(_mark())
        return prefix + marks[-1]

    port = controller.grpc_port
    raw: list[list[tuple[bytes, bytes]]] = [
        [(b"authorization", b"Bearer " + new().encode() + b"\xff\xfe\x80")],
        [(b"authorization", b"Bearer " + new().encode() + b"\x01\x1b[31m\x7f")],
        [(b"authorization", b"Bearer " + new().encode() + b"\x00tail")],
        [(b"authorization", b"Bearer " + new().encode() + b"\nINFO forged line")],
        [(b"authorization", b"Bearer " + new().encode() + b"A" * 9000)],
        [(b"authorization", new().encode())],
        [(b"authorization", b"bearer " + new().encode() + b"\xc3")],
        [(b"authorization", b"Bearer " + new().encode()), (b"authorization", new().encode())],
        [(b"authorization-bin", new().encode()), (b"x-token", new().encode() + b"\xff")],
    ]
    for metadata in raw:
        # Whatever the answer (or none at all), it never echoes the token.
        back = raw_h2_call(port, WHOAMI, metadata, b"", wait=0.5)
        for mark in marks:
            assert mark.encode() not in back
    # Through gRPC's own client: wrong and revoked tokens.
    whoami = SERVICE.methods_by_name["WhoAmI"]
    revoked = controller.create_user("gone", "viewer").token
    assert schoolctl(controller.address, "users", "revoke", "gone").code == 0
    marks.append(revoked.removeprefix("sfu_"))
    with grpc.insecure_channel(controller.address, options=CLIENT_OPTIONS) as channel:
        for token in (new(), revoked, new("")):
            answer = call(channel, whoami, admin_pb2.WhoAmIRequest(), token)
            assert answer.code == grpc.StatusCode.UNAUTHENTICATED, answer
        # Enrollment tokens: unknown, and one whose bytes are not UTF-8 at all.
        for token in (new("sfe_abcdefgh"), new("sfe_")):
            request = agent_pb2.EnrollRequest(token=token, device_id="panel-s", csr_pem=csr_pem())
            code, details, _ = unary(channel, ENROLL, request.SerializeToString())
            assert code == grpc.StatusCode.PERMISSION_DENIED, details
        bad = length_delimited(1, b"sfe_" + new("").encode() + b"\xff")
        assert unary(channel, ENROLL, bad)[0] == grpc.StatusCode.INVALID_ARGUMENT
    controller.stop()

    log = controller.log.read_bytes()
    for mark in marks:
        assert mark.encode() not in log, mark
    assert b"forged line" not in log
    with contextlib.closing(sqlite3.connect(controller.database)) as db:
        audit = repr(db.execute("SELECT * FROM audit").fetchall())
    for mark in marks:
        assert mark not in audit, mark
