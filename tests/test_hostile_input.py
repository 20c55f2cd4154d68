"""Hostile input at the controller's gRPC ports: every request gets a clean status.

One controller with mutual TLS runs for the whole module, with one well-behaved
device (a real agent, enrolled with a token) streaming throughout. Random and
malformed protobuf, oversized messages, forged and expired certificates, replayed
enrollment tokens and plain garbage are thrown at both ports; after each test the
controller is still up, wrote no traceback, and the good device's heartbeats are
still being stored, with no gap in its sequence and its stream never dropped.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.enroll import message_limits
from agent.link import channel_options
from agent.settings import AgentSettings
from controller.device_certs import device_identity, device_urn
from controller.pki import CertificateAuthority, load_ca
from controller.server import grpc_options
from controller.settings import ControllerSettings
from inventory.model import DeviceKind
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2
from tests import hostile
from tests.hostile import CLEAN, ENROLL, DeviceRow, KeyCert
from tests.procs import Agent, Controller, init_controller_ca, tls_env, wait_until
from tests.wire import heartbeat, hello

pytestmark = pytest.mark.e2e

GOOD, SCHOOL = "panel-good", "4321"
# A secret no token has.
_NOBODYS = "sfe_unknown"
# The device the hostile streams claim to be: it has a real certificate of its own.
FUZZ = "panel-fuzz"
MAX = ControllerSettings().max_message_bytes
UNAVAILABLE, UNAUTHENTICATED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED
INVALID, DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class Fleet:
    """The controller under attack and what the tests need to reach it."""

    controller: Controller
    agent: Agent
    ca: CertificateAuthority
    ca_pem: bytes
    # Server-side TLS only: enrollment and the admin API.
    enroll: grpc.Channel
    # Mutual TLS as FUZZ, the device the hostile streams come from.
    device: grpc.Channel
    # Where the current test's part of the controller's log starts.
    log_from: int = 0

    @property
    def database(self) -> Path:
        return self.controller.database

    def good(self) -> DeviceRow:
        row = hostile.device_row(self.database, GOOD)
        assert row is not None, "the good device is not in the store"
        return row

    def mutual(self, client: KeyCert | None) -> grpc.Channel:
        return hostile.tls_channel(self.controller.grpc_port, self.ca_pem, client)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("hostile")
    data = tmp / "data"
    init_controller_ca(data)
    controller = Controller(tmp, env=tls_env(data))
    agent: Agent | None = None
    channels: list[grpc.Channel] = []
    try:
        controller.start()
        ca_pem = (data / "pki/ca.crt").read_bytes()
        agent = Agent(
            tmp,
            GOOD,
            "panel",
            SCHOOL,
            "r1",
            controller.address,
            extra={
                "enroll_token": hostile.seed_token(controller.database, SCHOOL),
                "ca_cert": str(data / "pki/ca.crt"),
                "enroll_controller": f"127.0.0.1:{controller.enroll_port}",
            },
        ).start()
        ca = load_ca(data / "pki")
        enroll = hostile.tls_channel(controller.enroll_port, ca_pem)
        device = hostile.tls_channel(
            controller.grpc_port, ca_pem, hostile.device_cert(ca, FUZZ, SCHOOL)
        )
        channels += [enroll, device]
        fleet = Fleet(controller, agent, ca, ca_pem, enroll, device)
        wait_until(
            lambda: (
                (row := hostile.device_row(controller.database, GOOD)) is not None
                and row.heartbeats_stored >= 2
            ),
            30,
            "the good device enrolled and reporting",
        )
        yield fleet
    finally:
        for channel in channels:
            channel.close()
        if agent is not None:
            agent.stop()
        controller.stop()


@pytest.fixture(autouse=True)
def _log_from(fleet: Fleet) -> None:
    """Each test answers for what the controller logged while it ran."""
    fleet.log_from = len(fleet.controller.log_text())


def _assert_unharmed(fleet: Fleet) -> None:
    """The controller is up and clean, and the good device goes on, losing nothing."""
    c = fleet.controller
    assert c.proc is not None and c.proc.poll() is None, c.log_text()[-3000:]
    now = fleet.good()

    # Two more: stored after whatever the test did, in order, none missing.
    def grown() -> DeviceRow | None:
        row = fleet.good()
        return row if row.heartbeats_stored >= now.heartbeats_stored + 2 else None

    later = wait_until(grown, 15, "the good device's heartbeats still being stored")
    assert later.seq_gaps == 0
    # Every heartbeat it sent was stored once: its sequence starts at 1 and has no holes.
    assert later.last_seq == later.heartbeats_stored
    assert fleet.agent.proc is not None and fleet.agent.proc.poll() is None
    log = c.log_text()
    mine = log[fleet.log_from :]
    assert "Traceback" not in mine, mine[-3000:]
    assert " ERROR " not in mine, [line for line in mine.splitlines() if " ERROR " in line]
    # Its stream was never cut or replaced by anyone else's.
    assert log.count(f"stream open device={GOOD} ") == 1


def _hello(device_id: str = FUZZ, **fields: object) -> agent_pb2.AgentMessage:
    message = hello(device_id, SCHOOL)
    for name, value in fields.items():
        setattr(message.hello, name, value)
    return message


def _bytes(*messages: Message | bytes) -> list[bytes]:
    return [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]


# --- 1. hypothesis: random requests --------------------------------------------------------

_random_requests = st.one_of(st.binary(max_size=2048), hostile.protobuf_ish())
_hostile_messages = hostile.agent_messages(FUZZ, SCHOOL).map(lambda m: m.SerializeToString())


def test_random_bytes_to_every_unary_method_get_a_clean_status(fleet: Fleet) -> None:
    # Run from inside the test, so that the fleet is checked once after all examples.
    @settings(max_examples=300, deadline=None)
    @given(path=st.sampled_from(hostile.unary_methods()), payload=_random_requests)
    def one_request(path: str, payload: bytes) -> None:
        # A decommission or ping that happened to name the good device would be real.
        assume(GOOD.encode() not in payload)
        code, details, _ = hostile.unary(fleet.enroll, path, payload)
        assert code in CLEAN, f"{path} {payload!r}: {code} {details}"

    one_request()
    _assert_unharmed(fleet)


def test_random_streams_get_a_clean_status(fleet: Fleet) -> None:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(hello_first=st.booleans(), messages=st.lists(_random_requests, max_size=4))
    def one_stream(hello_first: bool, messages: list[bytes]) -> None:
        assume(GOOD.encode() not in b"".join(messages))
        sent = _bytes(_hello(), *messages) if hello_first else messages
        code, details = hostile.stream(fleet.device, sent)
        assert code in CLEAN, f"{sent!r}: {code} {details}"

    one_stream()
    _assert_unharmed(fleet)


def test_streams_of_hostile_field_values_get_a_clean_status(fleet: Fleet) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages=st.lists(_hostile_messages, min_size=1, max_size=4))
    def one_stream(messages: list[bytes]) -> None:
        code, details = hostile.stream(fleet.device, _bytes(_hello(), *messages))
        assert code in CLEAN, f"{messages!r}: {code} {details}"

    one_stream()
    _assert_unharmed(fleet)


# --- 2. malformed protobuf, oversized and wrong-type messages ------------------------------


def _nested_groups(depth: int) -> bytes:
    # Unknown field 99 as groups inside groups: a parser that recursed without a limit
    # would run out of stack.
    return hostile.tag(99, hostile.SGROUP) * depth + hostile.tag(99, hostile.EGROUP) * depth


def _nested_unknown(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = hostile.length_delimited(99, inner)
    return inner


def _time(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def _beat(seq: int = 1, **health: object) -> agent_pb2.AgentMessage:
    message = heartbeat(seq)
    for name, value in health.items():
        getattr(message.heartbeat.health, name).CopyFrom(value)
    return message


def _hello_of_size(size: int) -> bytes:
    """A Hello whose serialized AgentMessage is exactly ``size`` bytes."""
    message = _hello(hostname="")
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
    (
        "length past the end",
        [hostile.tag(_HELLO_FIELD, hostile.LEN) + b"\x64abc"],
        INVALID,
        _NOT_PARSED,
    ),
    ("end group without a start", [hostile.tag(99, hostile.EGROUP)], INVALID, _NOT_PARSED),
    ("wire type 7", [hostile.tag(1, 7) + b"\x00"], INVALID, _NOT_PARSED),
    # A known field with the wrong wire type is kept as an unknown field: no body.
    (
        "Hello as a varint",
        [hostile.tag(_HELLO_FIELD, hostile.VARINT) + b"\x01"],
        INVALID,
        _FIRST_HELLO,
    ),
    (
        "Hello.device_id as a varint",
        [
            hostile.length_delimited(
                _HELLO_FIELD,
                hostile.tag(1, hostile.VARINT) + b"\x05" + hostile.tag(2, hostile.VARINT) + b"\x01",
            )
        ],
        INVALID,
        "Hello.device_id '' is not a valid id",
    ),
    ("groups nested 10,000 deep", [_nested_groups(10_000)], INVALID, _NOT_PARSED),
    (
        "groups nested deep after Hello",
        _bytes(_hello(), _nested_groups(5_000)),
        INVALID,
        _NOT_PARSED,
    ),
    (
        "invalid UTF-8 in Hello.device_id",
        [hostile.length_delimited(_HELLO_FIELD, hostile.length_delimited(1, _BAD_UTF8))],
        INVALID,
        _NOT_PARSED,
    ),
    (
        "invalid UTF-8 in Heartbeat.reasons",
        _bytes(
            _hello(),
            hostile.tag(1, hostile.VARINT)
            + b"\x01"
            + hostile.length_delimited(11, hostile.length_delimited(5, _BAD_UTF8)),
        ),
        INVALID,
        _NOT_PARSED,
    ),
    (
        "an EnrollRequest on Connect",
        _bytes(agent_pb2.EnrollRequest(token=_NOBODYS, device_id=FUZZ)),
        INVALID,
        _FIRST_HELLO,
    ),
    (
        "a Welcome sent up",
        _bytes(
            agent_pb2.ControllerMessage(welcome=agent_pb2.Welcome(heartbeat_interval_seconds=1))
        ),
        INVALID,
        "Hello.kind 0 is not a known device kind",
    ),
    ("Hello with a 1 MiB device id", _bytes(_hello("p" * 1024 * 1024)), TOO_LARGE, ""),
    (
        "Hello one byte over max_message_bytes",
        [_hello_of_size(MAX + 1)],
        TOO_LARGE,
        f"over the {MAX} limit",
    ),
    (
        "a heartbeat one byte over max_message_bytes",
        _bytes(_hello(), heartbeat(1), b"\x08\x02" + hostile.length_delimited(99, b"x" * MAX)),
        TOO_LARGE,
        f"over the {MAX} limit",
    ),
    # What SQLite cannot hold (its integers are signed 64-bit) and Timestamps that are
    # no time at all must be refused at the door, not fail in the writer later.
    ("seq beyond int64", _bytes(_hello(), heartbeat(_INT64_MAX + 1)), INVALID, "AgentMessage.seq"),
    (
        "a command result with seq beyond int64",
        _bytes(_hello(), _result(2**64 - 1, _time(1))),
        INVALID,
        "AgentMessage.seq",
    ),
    (
        "collected_at in the year 10000",
        _bytes(_hello(), _beat(collected_at=_time(_YEAR_10000))),
        INVALID,
        "Health.collected_at",
    ),
    (
        "collected_at with negative nanos",
        _bytes(_hello(), _beat(collected_at=_time(1, -1))),
        INVALID,
        "Health.collected_at",
    ),
    (
        "finished_at before the year 1",
        _bytes(_hello(), _result(1, _time(-(2**62)))),
        INVALID,
        "CommandResult.finished_at",
    ),
    (
        "boot_time far in the future",
        _bytes(
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
        _bytes(
            _hello(),
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
        got, details = hostile.stream(fleet.device, messages)
        assert (got, words in details) == (code, True), f"{name}: {got} {details}"
    # At exactly the limit a message is read, and judged on what it says.
    got, details = hostile.stream(fleet.device, [_hello_of_size(MAX)])
    assert (got, details) == (INVALID, "Hello.hostname is longer than 255 characters")
    # Unknown fields, however deep, are skipped: a Hello carrying them is welcome.
    deep = _hello().SerializeToString() + _nested_unknown(200)
    assert hostile.stream(fleet.device, [deep, heartbeat(10**6).SerializeToString()]) == (
        grpc.StatusCode.OK,
        "",
    )
    _assert_unharmed(fleet)


def _enroll_request(device_id: str = "panel-m", **fields: object) -> bytes:
    return agent_pb2.EnrollRequest(
        token=_NOBODYS, device_id=device_id, csr_pem=hostile.csr_pem(), **fields
    ).SerializeToString()


def _enroll_of_size(size: int) -> bytes:
    request = agent_pb2.EnrollRequest(token=_NOBODYS, device_id="panel-m")
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
    ("length past the end", hostile.tag(1, hostile.LEN) + b"\x40sfe_", INVALID, _ENROLL_NOT_PARSED),
    (
        "invalid UTF-8 in the token",
        hostile.length_delimited(1, _BAD_UTF8),
        INVALID,
        _ENROLL_NOT_PARSED,
    ),
    ("groups nested 10,000 deep", _nested_groups(10_000), INVALID, _ENROLL_NOT_PARSED),
    (
        "an AgentMessage as the request",
        _hello().SerializeToString(),
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
        got, details, _ = hostile.unary(fleet.enroll, ENROLL, payload)
        assert (got, words in details) == (code, True), f"{name}: {got} {details}"
    # The admin API: whatever it asks of its callers first, undecodable bytes are refused.
    for path in hostile.unary_methods():
        got, details, _ = hostile.unary(fleet.enroll, path, b"\x0a\x80")
        assert got in {INVALID, UNAUTHENTICATED}, f"{path}: {got} {details}"
    _assert_unharmed(fleet)


# --- 3. certificates ----------------------------------------------------------------------


def _connect_as(
    fleet: Fleet, client: KeyCert | None, device_id: str
) -> tuple[grpc.StatusCode, str]:
    with fleet.mutual(client) as channel:
        return hostile.stream(channel, _bytes(_hello(device_id), heartbeat(10**9)))


def test_expired_forged_and_nameless_certificates_are_refused(fleet: Fleet) -> None:
    ca = fleet.ca
    urn = device_urn(SCHOOL, GOOD)
    now = dt.datetime.now(dt.UTC)
    look_alike = hostile.look_alike_ca(ca)
    pki = fleet.controller.workdir / "data/pki"
    # Refused in the TLS handshake: the client sees UNAVAILABLE, the handler never runs.
    handshake_refusals: dict[str, KeyCert] = {
        "expired, from the right CA": hostile.certificate(
            ca.certificate.subject,
            ca.key,
            [urn],
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        ),
        "not valid yet, from the right CA": hostile.certificate(
            ca.certificate.subject, ca.key, [urn], not_before=now + dt.timedelta(days=1)
        ),
        "self-signed with the device's URN": hostile.self_signed(urn),
        "signed by a look-alike of the CA": hostile.certificate(*look_alike, [urn]),
        # The CA's, but made for servers (no clientAuth): the controller's own.
        "the controller's server certificate": KeyCert(
            (pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes()
        ),
    }
    for name, client in handshake_refusals.items():
        code, details = _connect_as(fleet, client, GOOD)
        assert code == UNAVAILABLE, f"{name}: {code} {details}"
    # The handshake passes, but the certificate names no one (or no one clearly).
    nameless: dict[str, list[str]] = {
        "no subject alternative name": [],
        "a URI that is not a device's": ["https://example.test/panel-good"],
        "two device URNs": [urn, device_urn(SCHOOL, FUZZ)],
        "a URN with a third part": [f"{urn}:extra"],
        "a URN in another spelling": [urn.replace("panel-good", "panel%2Dgood")],
    }
    for name, uris in nameless.items():
        client = hostile.certificate(ca.certificate.subject, ca.key, uris)
        code, details = _connect_as(fleet, client, GOOD)
        assert (code, details) == (
            UNAUTHENTICATED,
            "a client certificate from this controller's CA is required",
        ), name
    # Without a certificate nothing on the mutual-TLS port is reachable, not even Enroll.
    with fleet.mutual(None) as channel:
        for path in hostile.unary_methods()[:2]:
            code, details, _ = hostile.unary(channel, path, _enroll_request())
            assert code == UNAVAILABLE, f"{path}: {code} {details}"
    _assert_unharmed(fleet)


def test_a_real_certificate_cannot_speak_for_the_good_device(fleet: Fleet) -> None:
    code, details = hostile.stream(fleet.device, _bytes(_hello(GOOD), heartbeat(10**9)))
    assert (code, details) == (
        DENIED,
        f"the certificate is for device {FUZZ}, Hello says {GOOD}",
    )
    # Its heartbeat, numbered far ahead, went nowhere: no gap opened in the good
    # device's sequence (checked below) and its stream stayed up.
    _assert_unharmed(fleet)


# --- 4. enrollment tokens -----------------------------------------------------------------


def _enroll(fleet: Fleet, secret: str, device_id: str) -> tuple[grpc.StatusCode, str, bytes]:
    request = agent_pb2.EnrollRequest(token=secret, device_id=device_id, csr_pem=hostile.csr_pem())
    return hostile.unary(fleet.enroll, ENROLL, request.SerializeToString())


def test_a_token_used_up_expired_or_revoked_issues_nothing(fleet: Fleet) -> None:
    db = fleet.database
    secret = hostile.seed_token(db, SCHOOL)
    code, details, response = _enroll(fleet, secret, "panel-r1")
    assert code == grpc.StatusCode.OK, details
    issued = agent_pb2.EnrollResponse.FromString(response)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    cert.verify_directly_issued_by(fleet.ca.certificate)
    assert device_identity(cert) == ("panel-r1", SCHOOL)

    refused = "the enrollment token is not valid (unknown, used up, expired or revoked)"
    for device_id in ("panel-r1", "panel-r2"):
        assert _enroll(fleet, secret, device_id) == (DENIED, refused, b"")
    assert hostile.token_uses(db, secret) == (1, 0)

    hour_ago = time.time() - 7200
    others = {
        "expired": hostile.seed_token(db, SCHOOL, uses=5, now=hour_ago),
        "revoked": hostile.seed_token(db, SCHOOL, uses=5, revoked=True),
        "another case": secret.upper(),
        "with a newline": secret + "\n",
        "only its id": secret[:12],
    }
    for name, other in others.items():
        assert _enroll(fleet, other, "panel-r3") == (DENIED, refused, b""), name
    assert hostile.token_uses(db, others["expired"]) == (0, 5)
    assert hostile.token_uses(db, others["revoked"]) == (0, 5)
    assert hostile.enrolled(db, ["panel-r1", "panel-r2", "panel-r3"]) == {"panel-r1"}
    _assert_unharmed(fleet)


def test_a_token_replayed_at_once_by_many_enrolls_one(fleet: Fleet) -> None:
    secret = hostile.seed_token(fleet.database, SCHOOL)
    devices = [f"panel-race{i}" for i in range(8)]
    with ThreadPoolExecutor(len(devices)) as pool:
        codes = list(pool.map(lambda d: _enroll(fleet, secret, d)[0], devices))
    assert sorted(c.name for c in codes) == ["OK"] + ["PERMISSION_DENIED"] * 7
    assert len(hostile.enrolled(fleet.database, devices)) == 1
    assert hostile.token_uses(fleet.database, secret) == (1, 0)
    _assert_unharmed(fleet)


def test_a_bad_request_with_a_good_token_uses_none_of_it(fleet: Fleet) -> None:
    secret = hostile.seed_token(fleet.database, SCHOOL, uses=3)
    p384 = hostile.csr_pem(hostile.new_key(curve="P-384"))
    tampered = hostile.tampered_csr()
    for name, csr, words in [
        ("a P-384 key", p384, "must be EC P-256"),
        ("a signature that does not verify", tampered, "signature does not verify"),
        ("a certificate instead of a CSR", fleet.ca_pem, "not a readable PEM CSR"),
        # Found by the atheris target: cryptography's InvalidVersion is no ValueError.
        ("a CSR of version 5", hostile.csr_of_version(4), "not a readable PEM CSR"),
        (
            "60 KiB of PEM armour",
            b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * 60_000,
            "not a readable PEM CSR",
        ),
    ]:
        request = agent_pb2.EnrollRequest(token=secret, device_id="panel-csr", csr_pem=csr)
        code, details, _ = hostile.unary(fleet.enroll, ENROLL, request.SerializeToString())
        assert (code, words in details) == (INVALID, True), f"{name}: {code} {details}"
    assert hostile.token_uses(fleet.database, secret) == (0, 3)
    assert hostile.enrolled(fleet.database, ["panel-csr"]) == set()
    _assert_unharmed(fleet)


# --- 5. garbage at the TCP ports ----------------------------------------------------------


def test_garbage_bytes_at_both_ports_harm_nobody(fleet: Fleet) -> None:
    rng = random.Random(20261123)
    hello_record = hostile.client_hello()
    garbage = {
        "random bytes": rng.randbytes(4096),
        "an HTTP/1.1 request": hostile.HTTP1_REQUEST,
        "an HTTP/2 preface in the clear": hostile.HTTP2_PREFACE + rng.randbytes(64),
        "a truncated ClientHello": hello_record[: len(hello_record) // 2],
        "a ClientHello and then garbage": hello_record + rng.randbytes(512),
        "a TLS record header claiming 16 MiB": b"\x16\x03\x01\xff\xff" + rng.randbytes(100),
    }
    c = fleet.controller
    for port in (c.grpc_port, c.enroll_port):
        with hostile.silent_connections(port, 20):
            for name, data in garbage.items():
                answer = hostile.poke(port, data)
                # Nothing in the clear ever comes back, least of all a traceback.
                assert b"Traceback" not in answer and b"HTTP/1.1 200" not in answer, name
            # With silent connections still open, both ports serve as before.
            code, details, _ = hostile.unary(fleet.enroll, ENROLL, b"\x1a\x80")
            assert code == INVALID, details
            assert hostile.stream(fleet.device, _bytes(_hello())) == (grpc.StatusCode.OK, "")
            _assert_unharmed(fleet)


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


def test_message_size_limits_are_explicit_on_both_ends() -> None:
    limits = {"grpc.max_send_message_length", "grpc.max_receive_message_length"}
    controller = dict(grpc_options(ControllerSettings(max_message_bytes=2048)))
    assert limits <= controller.keys()
    # Above the controller's own limit, which it checks itself to say why it refuses.
    assert controller["grpc.max_receive_message_length"] > 2048
    agent = AgentSettings("p1", DeviceKind.PANEL, "s1", max_message_bytes=5000)
    for options in (channel_options(agent), message_limits(agent)):
        assert {k: v for k, v in options if k in limits} == dict.fromkeys(limits, 5000)
