"""The log is one line per event, whatever a client sends: no forged lines, no floods.

The formatter is checked on its own, then end to end: a real controller is sent ids
with newlines and escape sequences, unauthenticated (Enroll's device id) and through
the admin API, and a request of almost a megabyte; its log keeps one line per event,
each line short, and no line the attacker wrote.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import grpc
import pytest

from common.logs import MESSAGE_MAX, OneLineFormatter, clip, escape
from protos.schoolfleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2
from tests.hostile_fleet import NOBODYS, Fleet, start_fleet
from tests.hostile_pki import csr_pem
from tests.hostile_wire import ENROLL, status_of, unary

FORGED = "2026-12-06 08:00:00,000 ERROR controller: FORGED"
HOSTILE_TEXTS = [
    f"panel-1\n{FORGED}",
    f"panel-1\r\n{FORGED}",
    f"panel-1\u2028{FORGED}",
    f"panel-1\x1b[2K\r{FORGED}",
]


def _formatted(message: str, *args: object, exc: BaseException | None = None) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tests.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        if exc is None:
            logger.warning(message, *args)
        else:
            try:
                raise exc
            except BaseException:
                logger.exception(message, *args)
    finally:
        logger.handlers.clear()
    return out.getvalue()


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_client_text_stays_inside_its_line(text: str) -> None:
    written = _formatted("enroll refused device=%s", text)
    assert written.count("\n") == 1, written
    assert written.startswith("WARNING tests.logs: enroll refused device=panel-1")
    assert "\x1b" not in written
    assert "\r" not in written
    assert "\u2028" not in written


def test_escapes_name_what_was_there() -> None:
    assert escape("a\nb\tc\x1b[0m\x00\u2029") == "a\\nb\\tc\\x1b[0m\\x00\\u2029"
    assert escape("école ✓") == "école ✓"


def test_a_long_message_is_cut_and_says_by_how_much() -> None:
    written = _formatted("selector %s", "x" * 900_000)
    line = written.rstrip("\n")
    assert "\n" not in line
    assert len(line) < MESSAGE_MAX + 100
    assert line.endswith(f"...({len('selector ') + 900_000 - MESSAGE_MAX} more characters)")
    assert clip("abcdef", 3) == "abc...(3 more characters)"


def test_a_traceback_keeps_its_lines_but_none_passes_for_an_event() -> None:
    written = _formatted("wave failed", exc=ValueError(f"bad value\n{FORGED}"))
    lines = written.rstrip("\n").split("\n")
    assert lines[0] == "ERROR tests.logs: wave failed"
    assert len(lines) > 2
    assert all(line.startswith("    ") for line in lines[1:]), lines
    assert not any(line.startswith("2026") for line in lines)


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with start_fleet(tmp_path_factory.mktemp("hostile-logs")) as fleet:
        yield fleet


def _decommission(fleet: Fleet, device_id: str) -> grpc.StatusCode:
    """DecommissionDevice as central ops: a change, so its refusal is logged with its target."""
    stub = admin_pb2_grpc.AdminServiceStub(fleet.enroll)
    try:
        stub.DecommissionDevice(
            admin_pb2.GetDeviceRequest(device_id=device_id),
            metadata=(("authorization", f"Bearer {fleet.controller.admin_token}"),),
            timeout=10,
        )
    except grpc.RpcError as exc:
        return status_of(exc)[0]
    return grpc.StatusCode.OK


@pytest.mark.e2e
def test_hostile_ids_and_huge_requests_leave_one_short_line_each(fleet: Fleet) -> None:
    fleet.log_from = len(fleet.controller.log_text())
    for text in HOSTILE_TEXTS:
        request = agent_pb2.EnrollRequest(token=NOBODYS, device_id=text, csr_pem=csr_pem())
        code, _, _ = unary(fleet.enroll, ENROLL, request.SerializeToString())
        assert code is not grpc.StatusCode.OK
        # Through the admin API too, where refused changes are logged with their target.
        assert _decommission(fleet, text) in {
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
        }
    huge = ("panel\n" + FORGED + "\n") * 12_000  # ~900 KB
    assert _decommission(fleet, huge) in {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    log = fleet.controller.log_text()[fleet.log_from :]
    lines = log.splitlines()
    assert lines, "the controller logged nothing of the attempts"
    assert not any(line.startswith(FORGED[:23]) for line in lines), lines
    assert max(len(line) for line in lines) < MESSAGE_MAX + 300
    assert "\x1b" not in log
    # The attacker's text is in the lines, escaped, but none of it became a line of its
    # own: every line is the controller's, at the level it chose.
    assert not [line for line in lines if re.match(r"\S+ \S+ ERROR ", line)]
    assert "Traceback" not in log
    assert fleet.controller.proc is not None and fleet.controller.proc.poll() is None
