"""Hostile bytes at the controller's gRPC ports: every request gets a clean status.

Random requests to every unary method and random streams (hypothesis), streams of
AgentMessages with wild field values, hand-made malformed protobuf (truncated,
nested 10,000 deep, invalid UTF-8, the wrong message type), messages over the size
limit and fields out of range, and malformed enrollment requests. Each is answered
with a status that says what was wrong, never UNKNOWN or INTERNAL, and the good
device of tests/hostile_fleet.py goes on unharmed. Also here: the atheris target
over the same input checks (tests/fuzz_protos.py), and the explicit message size
limits on both ends.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.enroll import message_limits
from agent.link import channel_options
from agent.settings import AgentSettings
from controller.server import grpc_options
from controller.settings import ControllerSettings
from inventory.model import DeviceKind
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from tests.hostile_fleet import (
    FUZZ,
    GOOD,
    MAX,
    NOBODYS,
    SCHOOL,
    Fleet,
    assert_unharmed,
    hello_from,
    serialized,
    start_fleet,
)
from tests.hostile_wire import (
    CLEAN,
    DENIED,
    EGROUP,
    ENROLL,
    INVALID,
    LEN,
    TOO_LARGE,
    UNAUTHENTICATED,
    VARINT,
    agent_messages,
    length_delimited,
    nested_groups,
    nested_unknown,
    protobuf_ish,
    stream,
    tag,
    unary,
    unary_methods,
)
from tests.raw_stream import heartbeat

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with start_fleet(tmp_path_factory.mktemp("hostile-streams")) as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def _log_from(fleet: Fleet) -> None:
    """Each test answers for what the controller logged while it ran."""
    fleet.log_from = len(fleet.controller.log_text())


# --- 1. hypothesis: random requests --------------------------------------------------------

_random_requests = st.one_of(st.binary(max_size=2048), protobuf_ish())
_hostile_messages = agent_messages(FUZZ, SCHOOL).map(lambda m: m.SerializeToString())


def test_random_bytes_to_every_unary_method_get_a_clean_status(fleet: Fleet) -> None:
    # Run from inside the test, so that the fleet is checked once after all examples.
    @settings(max_examples=300, deadline=None)
    @given(path=st.sampled_from(unary_methods()), payload=_random_requests)
    def one_request(path: str, payload: bytes) -> None:
        # A decommission or ping that happened to name the good device would be real.
        assume(GOOD.encode() not in payload)
        code, details, _ = unary(fleet.enroll, path, payload)
        assert code in CLEAN, f"{path} {payload!r}: {code} {details}"

    one_request()
    assert_unharmed(fleet)


def test_random_streams_get_a_clean_status(fleet: Fleet) -> None:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(hello_first=st.booleans(), messages=st.lists(_random_requests, max_size=4))
    def one_stream(hello_first: bool, messages: list[bytes]) -> None:
        assume(GOOD.encode() not in b"".join(messages))
        sent = serialized(hello_from(), *messages) if hello_first else messages
        code, details = stream(fleet.device, sent)
        assert code in CLEAN, f"{sent!r}: {code} {details}"

    one_stream()
    assert_unharmed(fleet)


def test_streams_of_hostile_field_values_get_a_clean_status(fleet: Fleet) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages=st.lists(_hostile_messages, min_size=1, max_size=4))
    def one_stream(messages: list[bytes]) -> None:
        code, details = stream(fleet.device, serialized(hello_from(), *messages))
        assert code in CLEAN, f"{messages!r}: {code} {details}"

    one_stream()
    assert_unharmed(fleet)


# --- 2. malformed protobuf, oversized and wrong-type messages ------------------------------


def _time(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def _beat(seq: int = 1, **health: object) -> agent_pb2.AgentMessage:
    message = heartbeat(seq)
    for name, value in health.items():
        getattr(message.heartbeat.health, name).CopyFrom(value)
    return message


def _hello_of_size(size: int) -> bytes:
    """A Hello whose serialized AgentMessage is exactly ``size`` bytes."""
    message = hello_from(hostname="")
    base = len(message.SerializeToString())
    # The hostname's own length prefix grows with it: find the length that fits.
    for pad in range(size - base, size - base - 8, -1):
        message.hello.hostname = "h" * pad
        data = message.SerializeToString()
        if len(data) == size:
            return data
    raise AssertionError(f"no Hello of exactly {size} bytes")


def _result(seq: int, finished_at: Timestamp) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        seq=seq,
        command_result=agent_pb2.CommandResult(
            command_id="c1", status=agent_pb2.CommandResult.STATUS_OK, finished_at=finished_at
        ),
    )


_HELLO_FIELD = 10
_NOT_PARSED = "not a valid schoolfleet.v1.AgentMessage"
_FIRST_HELLO = "first message on a stream must be Hello"
_BAD_UTF8 = b"\xc3\x28\xff"
_INT64_MAX = 2**63 - 1
# Timestamps are valid for the years 1 to 9999 only.
_YEAR_10000 = 253_402_300_800

# name, messages, expected code, expected words in the details
STREAM_CASES: list[tuple[str, list[bytes], grpc.StatusCode, str]] = [
    ("truncated varint", [b"\x08\x80\x80"], INVALID, _NOT_PARSED),
    ("length past the end", [tag(_HELLO_FIELD, LEN) + b"\x64abc"], INVALID, _NOT_PARSED),
    ("end group without a start", [tag(99, EGROUP)], INVALID, _NOT_PARSED),
    ("wire type 7", [tag(1, 7) + b"\x00"], INVALID, _NOT_PARSED),
    # A known field with the wrong wire type is kept as an unknown field: no body.
    ("Hello as a varint", [tag(_HELLO_FIELD, VARINT) + b"\x01"], INVALID, _FIRST_HELLO),
    (
        "Hello.device_id as a varint",
        [length_delimited(_HELLO_FIELD, tag(1, VARINT) + b"\x05" + tag(2, VARINT) + b"\x01")],
        INVALID,
        "Hello.device_id '' is not a valid id",
    ),
    ("groups nested 10,000 deep", [nested_groups(10_000)], INVALID, _NOT_PARSED),
    (
        "groups nested deep after Hello",
        serialized(hello_from(), nested_groups(5_000)),
        INVALID,
        _NOT_PARSED,
    ),
    (
        "invalid UTF-8 in Hello.device_id",
        [length_delimited(_HELLO_FIELD, length_delimited(1, _BAD_UTF8))],
        INVALID,
        _NOT_PARSED,
    ),
    (
        "invalid UTF-8 in Heartbeat.reasons",
        serialized(
            hello_from(),
            tag(1, VARINT) + b"\x01" + length_delimited(11, length_delimited(5, _BAD_UTF8)),
        ),
        INVALID,
        _NOT_PARSED,
    ),
    (
        "an EnrollRequest on Connect",
        serialized(agent_pb2.EnrollRequest(token=NOBODYS, device_id=FUZZ)),
        INVALID,
        _FIRST_HELLO,
    ),
    (
        "a Welcome sent up",
        serialized(
            agent_pb2.ControllerMessage(welcome=agent_pb2.Welcome(heartbeat_interval_seconds=1))
        ),
        INVALID,
        "Hello.kind 0 is not a known device kind",
    ),
    ("Hello with a 1 MiB device id", serialized(hello_from("p" * 1024 * 1024)), TOO_LARGE, ""),
    (
        "Hello one byte over max_message_bytes",
        [_hello_of_size(MAX + 1)],
        TOO_LARGE,
        f"over the {MAX} limit",
    ),
    (
        "a heartbeat one byte over max_message_bytes",
        serialized(hello_from(), heartbeat(1), b"\x08\x02" + length_delimited(99, b"x" * MAX)),
        TOO_LARGE,
        f"over the {MAX} limit",
    ),
    # What SQLite cannot hold (its integers are signed 64-bit) and Timestamps that are
    # no time at all must be refused at the door, not fail in the writer later.
    (
        "seq beyond int64",
        serialized(hello_from(), heartbeat(_INT64_MAX + 1)),
        INVALID,
        "AgentMessage.seq",
    ),
    (
        "a command result with seq beyond int64",
        serialized(hello_from(), _result(2**64 - 1, _time(1))),
        INVALID,
        "AgentMessage.seq",
    ),
    (
        "collected_at in the year 10000",
        serialized(hello_from(), _beat(collected_at=_time(_YEAR_10000))),
        INVALID,
        "Health.collected_at",
    ),
    (
        "collected_at with negative nanos",
        serialized(hello_from(), _beat(collected_at=_time(1, -1))),
        INVALID,
        "Health.collected_at",
    ),
    (
        "finished_at before the year 1",
        serialized(hello_from(), _result(1, _time(-(2**62)))),
        INVALID,
        "CommandResult.finished_at",
    ),
    (
        "boot_time far in the future",
        serialized(
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    device_id=FUZZ,
                    kind=fleet_pb2.DEVICE_KIND_PANEL,
                    school_id=SCHOOL,
                    os=fleet_pb2.OsInfo(boot_time=_time(2**62)),
                )
            )
        ),
        INVALID,
        "Hello.os.boot_time",
    ),
    (
        "spool.dropped beyond int64",
        serialized(
            hello_from(),
            agent_pb2.AgentMessage(
                seq=1,
                heartbeat=agent_pb2.Heartbeat(
                    condition=fleet_pb2.CONDITION_OK, spool=fleet_pb2.SpoolStats(dropped=2**64 - 1)
                ),
            ),
        ),
        INVALID,
        "SpoolStats.dropped",
    ),
]


def test_malformed_streams_are_refused_with_the_reason(fleet: Fleet) -> None:
    for name, messages, code, words in STREAM_CASES:
        got, details = stream(fleet.device, messages)
        assert (got, words in details) == (code, True), f"{name}: {got} {details}"
    # At exactly the limit a message is read, and judged on what it says.
    got, details = stream(fleet.device, [_hello_of_size(MAX)])
    assert (got, details) == (INVALID, "Hello.hostname is longer than 255 characters")
    # Unknown fields, however deep, are skipped: a Hello carrying them is welcome.
    deep = hello_from().SerializeToString() + nested_unknown(200)
    assert stream(fleet.device, [deep, heartbeat(10**6).SerializeToString()]) == (
        grpc.StatusCode.OK,
        "",
    )
    assert_unharmed(fleet)


def _enroll_of_size(size: int) -> bytes:
    request = agent_pb2.EnrollRequest(token=NOBODYS, device_id="panel-m")
    base = len(request.SerializeToString())
    for pad in range(size - base, size - base - 8, -1):
        request.csr_pem = b"c" * pad
        data = request.SerializeToString()
        if len(data) == size:
            return data
    raise AssertionError(f"no EnrollRequest of exactly {size} bytes")


_ENROLL_NOT_PARSED = "not a valid schoolfleet.v1.EnrollRequest"
ENROLL_CASES: list[tuple[str, bytes, grpc.StatusCode, str]] = [
    ("truncated varint", b"\x1a\x80", INVALID, _ENROLL_NOT_PARSED),
    ("length past the end", tag(1, LEN) + b"\x40sfe_", INVALID, _ENROLL_NOT_PARSED),
    ("invalid UTF-8 in the token", length_delimited(1, _BAD_UTF8), INVALID, _ENROLL_NOT_PARSED),
    ("groups nested 10,000 deep", nested_groups(10_000), INVALID, _ENROLL_NOT_PARSED),
    (
        "an AgentMessage as the request",
        hello_from().SerializeToString(),
        INVALID,
        "device id '' is not a valid id",
    ),
    (
        "one byte over max_message_bytes",
        _enroll_of_size(MAX + 1),
        TOO_LARGE,
        f"over the {MAX} limit",
    ),
    ("1 MiB", _enroll_of_size(1024 * 1024), TOO_LARGE, ""),
    # At the limit it is read: the token is what refuses it.
    ("exactly max_message_bytes", _enroll_of_size(MAX), DENIED, "enrollment token is not valid"),
]


def test_malformed_enrollments_are_refused_with_the_reason(fleet: Fleet) -> None:
    for name, payload, code, words in ENROLL_CASES:
        got, details, _ = unary(fleet.enroll, ENROLL, payload)
        assert (got, words in details) == (code, True), f"{name}: {got} {details}"
    # The admin API: whatever it asks of its callers first, undecodable bytes are refused.
    for path in unary_methods():
        got, details, _ = unary(fleet.enroll, path, b"\x0a\x80")
        assert got in {INVALID, UNAUTHENTICATED}, f"{path}: {got} {details}"
    assert_unharmed(fleet)


# --- atheris: the checks the controller applies to what devices send ----------------------


def test_atheris_finds_no_unexpected_exception_in_the_input_checks(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("fuzz_protos.py")),
            str(corpus),
            "-runs=400000",
            "-max_len=4096",
            "-timeout=10",
            # A failing input is written here, and named in the output.
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Done 400000 runs" in done.stderr, done.stderr[-2000:]


# --- message size limits, as configured ---------------------------------------------------


def test_message_size_limits_are_explicit_on_both_ends() -> None:
    limits = {"grpc.max_send_message_length", "grpc.max_receive_message_length"}
    controller = dict(grpc_options(ControllerSettings(max_message_bytes=2048)))
    assert limits <= controller.keys()
    # Above the controller's own limit, which it checks itself to say why it refuses.
    assert controller["grpc.max_receive_message_length"] > 2048
    agent = AgentSettings("p1", DeviceKind.PANEL, "s1", max_message_bytes=5000)
    for options in (channel_options(agent), message_limits(agent)):
        assert {k: v for k, v in options if k in limits} == dict.fromkeys(limits, 5000)
