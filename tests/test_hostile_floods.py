"""Floods of bad credentials: limited per source, and folded in the audit and the log.

A controller listens on loopback for IPv4 and IPv6, two sources. From 127.0.0.1
come hundreds of enrollments with a wrong token and admin calls with a wrong
bearer token; after its budget that source is answered RESOURCE_EXHAUSTED with a
hint of when to try again, its attempts take a bounded number of audit entries
(one that counts them all) and log lines, while ::1 enrolls and signs in at once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.schoolfleet.v1 import admin_pb2, agent_pb2
from tests.hostile_admin import SERVICE, call
from tests.hostile_fleet import seed_token
from tests.hostile_pki import csr_pem
from tests.hostile_wire import CLIENT_OPTIONS, ENROLL, unary
from tests.procs import Controller, init_controller_ca

pytestmark = pytest.mark.e2e

FLOOD = 300
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    """A lab controller on localhost (127.0.0.1 and ::1) that can sign certificates."""
    init_controller_ca(tmp_path / "data")
    c = Controller(
        tmp_path, host="localhost", env={"SCHOOLFLEET_CONTROLLER_DATA_DIR": str(tmp_path / "data")}
    )
    try:
        yield c.start()
    finally:
        c.stop()


def _audit(database: Path) -> list[tuple[str, str, str, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT actor, action, message, peer FROM audit ORDER BY entry_id")
        return [tuple(str(v) for v in r) for r in rows.fetchall()]  # type: ignore[misc]


def _enroll(channel: grpc.Channel, token: str, device_id: str) -> tuple[grpc.StatusCode, str]:
    request = agent_pb2.EnrollRequest(token=token, device_id=device_id, csr_pem=csr_pem())
    code, details, _ = unary(channel, ENROLL, request.SerializeToString())
    return code, details


def test_a_flood_of_bad_tokens_is_limited_and_folded(controller: Controller) -> None:
    port = controller.grpc_port
    v4 = grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS)
    v6 = grpc.insecure_channel(f"[::1]:{port}", options=CLIENT_OPTIONS)
    whoami = SERVICE.methods_by_name["WhoAmI"]
    log_before = controller.log_text().count("\n")
    try:
        enrolls = [_enroll(v4, "sfe_wrong" + "x" * 39, f"panel-f{n}") for n in range(FLOOD)]
        signins = [
            call(v4, whoami, admin_pb2.WhoAmIRequest(), f"sfu_wrong{n}").code for n in range(FLOOD)
        ]
        # The other source is not slowed: it enrolls and signs in at once.
        good = seed_token(controller.database, "sch-1")
        assert _enroll(v6, good, "panel-good")[0] == grpc.StatusCode.OK
        me = call(v6, whoami, admin_pb2.WhoAmIRequest(), controller.admin_token)
        assert me.code == grpc.StatusCode.OK, me
        # A good token from the flooding source is served (others share its address:
        # a school's NAT, a load balancer); a bad one still waits.
        assert (
            call(v4, whoami, admin_pb2.WhoAmIRequest(), controller.admin_token).code
            == grpc.StatusCode.OK
        )
        assert call(v4, whoami, admin_pb2.WhoAmIRequest(), "sfu_wrong").code == EXHAUSTED
    finally:
        v4.close()
        v6.close()
    codes = [c for c, _ in enrolls]
    refused = codes.count(grpc.StatusCode.PERMISSION_DENIED)
    # The budget: 20 at once (and one more now and then as it refills).
    assert 20 <= refused <= 23 and codes.count(EXHAUSTED) == FLOOD - refused, codes
    assert codes.index(EXHAUSTED) == refused, "limited from the budget on, not before"
    hint = next(d for c, d in enrolls if c == EXHAUSTED)
    assert hint.startswith("too many refused attempts from 127.0.0.1: try again in "), hint
    unauthenticated = signins.count(grpc.StatusCode.UNAUTHENTICATED)
    assert 20 <= unauthenticated <= 23 and signins.count(EXHAUSTED) == FLOOD - unauthenticated
    # The log grew by a line per refused attempt within the budget and a few more.
    grown = controller.log_text().count("\n") - log_before
    assert grown < 2 * 23 + 10, controller.log_text()[-4000:]

    controller.stop()
    rows = [r for r in _audit(controller.database) if "127.0.0.1" in r[3] and r[0] == "-"]
    for kind, within, attempts in (
        ("enroll", refused, FLOOD),
        # And the bad sign-in after the good one.
        ("sign-in", unauthenticated, FLOOD + 1),
    ):
        found = [r for r in rows if (r[1] == "enroll") == (kind == "enroll")]
        # Each refusal within the budget on its own; then the first answer over it,
        # and one entry that counts all the others.
        assert len(found) == within + 2, (kind, found)
        assert found[within][2].startswith("too many refused attempts"), found[within]
        last = found[-1][2]
        assert last.startswith("refused again from 127.0.0.1 since "), last
        assert f"({attempts - within - 1} attempts)" in last, (last, attempts, within)
