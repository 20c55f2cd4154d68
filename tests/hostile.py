"""Hostile clients for tests: hand-made protobuf, forged certificates, raw sockets.

Everything here talks to a real controller over loopback, or reads its SQLite file
read-only; nothing stands in for one of our own components.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from controller import enrollment
from controller.device_certs import sign_device_csr
from controller.pki import CertificateAuthority
from controller.store import open_store
from protos.schoolfleet.v1 import admin_pb2, agent_pb2

CONNECT = "/schoolfleet.v1.AgentService/Connect"
ENROLL = "/schoolfleet.v1.AgentService/Enroll"

# What a controller may answer a hostile request with: each says what was wrong.
# UNKNOWN and INTERNAL never: they mean an exception we did not expect.
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Random bytes are sometimes a valid request, and then the answer is OK.
CLEAN = REFUSALS | {grpc.StatusCode.OK}

# Client channels say their limits too (gRPC's default send limit is none at all);
# large enough to send what the controller must refuse.
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]


def unary_methods() -> list[str]:
    """The path of every method of AgentService and AdminService that takes one request."""
    paths = []
    for descriptor, name in (
        (agent_pb2.DESCRIPTOR, "AgentService"),
        (admin_pb2.DESCRIPTOR, "AdminService"),
    ):
        service = descriptor.services_by_name[name]
        paths += [
            f"/{service.full_name}/{m.name}" for m in service.methods if not m.client_streaming
        ]
    return paths


# --- the protobuf wire format, by hand --------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    """``value`` (0 to 2**64-1) as a base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload


@st.composite
def _field(draw: st.DrawFn, children: st.SearchStrategy[bytes]) -> bytes:
    # Field numbers of the schema (so wrong wire types hit real fields) and a few others.
    number = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 99, 536_870_911]))
    wire_type = draw(st.sampled_from([VARINT, I64, LEN, SGROUP, I32, 6, 7]))
    head = tag(number, wire_type)
    if wire_type == VARINT:
        return head + varint(draw(st.integers(0, 2**64 - 1)))
    if wire_type == I64:
        return head + draw(st.binary(min_size=8, max_size=8))
    if wire_type == I32:
        return head + draw(st.binary(min_size=4, max_size=4))
    if wire_type == SGROUP:
        return head + draw(children) + tag(number, EGROUP)
    if wire_type == LEN:
        payload = draw(
            st.one_of(children, st.text(max_size=40).map(str.encode), st.binary(max_size=40))
        )
        # Now and then a length that runs past the end, or falls short of it.
        length = len(payload) + draw(st.sampled_from([0, 0, 0, 0, 1, 1000, -1]))
        return head + varint(max(length, 0)) + payload
    return head  # wire types 6 and 7 do not exist


def protobuf_ish() -> st.SearchStrategy[bytes]:
    """Bytes that look like protobuf: real field numbers, any wire type, nesting, and
    now and then a truncated varint or a length past the end."""
    messages = st.recursive(
        st.just(b""),
        lambda children: st.lists(_field(children), max_size=4).map(b"".join),
        max_leaves=12,
    )
    tails = st.sampled_from([b"", b"", b"", b"\x80", b"\x08\xff\xff"])
    return st.tuples(messages, tails).map(b"".join)


# uint64 fields, with a weight on the edges: int64's (what SQLite holds) and their own.
_u64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(2**63 - 2, 2**63 + 2), st.just(2**64 - 1))
_enum = st.integers(-(2**31), 2**31 - 1)
_FINE_TIME = st.builds(lambda s: Timestamp(seconds=s), st.integers(0, 2**32))
_WILD_TIME = st.builds(
    lambda s, n: Timestamp(seconds=s, nanos=n),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**31), 2**31 - 1),
)
# Each field: values the controller takes, and values no well-behaved agent sends.
_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "seq": (st.integers(1, 1000), _u64),
    "kind": (st.sampled_from([1, 2, 3, 4]), _enum),
    "text": (st.text(max_size=20), st.text(min_size=200, max_size=300)),
    "time": (_FINE_TIME, _WILD_TIME),
    "percent": (st.floats(0, 100), st.floats()),
    "figure": (st.floats(0, 1e9), st.floats()),
    "condition": (st.sampled_from([0, 1, 2, 3]), _enum),
    "reasons": (st.lists(st.text(max_size=20), max_size=4), st.lists(st.text(), max_size=40)),
    "dropped": (st.integers(0, 1000), _u64),
    "status": (st.sampled_from([1, 2, 3]), _enum),
}


@st.composite
def agent_messages(draw: st.DrawFn, device_id: str, school_id: str) -> agent_pb2.AgentMessage:
    """An AgentMessage of any shape in which at most one kind of field is wild: the
    others pass the controller's checks, so that the wild one reaches what is behind
    them. A Hello names ``device_id``, so that it gets past the certificate check."""
    wild = draw(st.sampled_from([None, *_FIELDS]))

    def value(kind: str) -> Any:
        fine, hostile = _FIELDS[kind]
        return draw(hostile if kind == wild else fine)

    message = agent_pb2.AgentMessage(seq=value("seq"))
    body = draw(st.sampled_from(["hello", "heartbeat", "heartbeat", "command_result", None]))
    if body == "hello":
        hello = message.hello
        hello.device_id = device_id if wild != "text" else value("text")
        hello.kind = value("kind")
        hello.school_id = school_id
        hello.hostname = value("text")
        hello.os.kernel = value("text")
        hello.os.boot_time.CopyFrom(value("time"))
    elif body == "heartbeat":
        hb = message.heartbeat
        hb.health.collected_at.CopyFrom(value("time"))
        hb.health.cpu_percent = value("percent")
        hb.health.disk_percent = value("percent")
        hb.health.load1 = value("figure")
        hb.condition = value("condition")
        hb.reasons.extend(value("reasons"))
        hb.spool.pending = draw(st.integers(0, 2**32 - 1))
        hb.spool.dropped = value("dropped")
        if draw(st.booleans()):
            hb.system.swap_percent = draw(st.floats())
            hb.system.filesystems.add(mountpoint=value("text"), total_bytes=draw(_u64))
    elif body == "command_result":
        result = message.command_result
        result.command_id = value("text")
        result.status = value("status")
        result.message = value("text")
        result.finished_at.CopyFrom(value("time"))
    return message


# --- certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCert:
    """A private key and its certificate, PEM: a client's TLS identity."""

    key: bytes
    cert: bytes


def new_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1() if curve == "P-384" else ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")]))
        .sign(key or new_key(), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def device_cert(ca: CertificateAuthority, device_id: str, school_id: str) -> KeyCert:
    """What enrollment gives a device: the CA's certificate for its own new key."""
    key = new_key()
    return KeyCert(key_pem(key), sign_device_csr(ca, csr_pem(key), device_id, school_id).pem)


def certificate(
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    uris: list[str],
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    client_auth: bool = True,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> KeyCert:
    """A client certificate made by hand: any issuer, any device URIs, any dates."""
    key = key or new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if client_auth:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    return KeyCert(key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def self_signed(uri: str) -> KeyCert:
    """A forgery: a certificate that names the device and vouches for itself."""
    key = new_key()
    return certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")]), key, [uri], key=key
    )


def tampered_csr() -> bytes:
    """A certificate request whose signature no longer matches what it says."""
    csr = x509.load_pem_x509_csr(csr_pem())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def csr_of_version(version: int) -> bytes:
    """A certificate request whose version field says ``version`` (0 means v1, the only one)."""
    der = x509.load_pem_x509_csr(csr_pem()).public_bytes(serialization.Encoding.DER)
    # The first INTEGER 0 in the DER is CertificationRequestInfo's version.
    at = der.index(b"\x02\x01\x00")
    der = der[:at] + bytes([2, 1, version]) + der[at + 3 :]
    return b"".join(
        [
            b"-----BEGIN CERTIFICATE REQUEST-----\n",
            base64.encodebytes(der),
            b"-----END CERTIFICATE REQUEST-----\n",
        ]
    )


def look_alike_ca(ca: CertificateAuthority) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    """Another key under the real CA's exact name: what a forger would sign with."""
    return ca.certificate.subject, new_key()


# --- the controller's store, read-only -------------------------------------------------


@dataclass(frozen=True)
class DeviceRow:
    """What the store holds of one device's stream of heartbeats."""

    heartbeats_stored: int
    last_seq: int
    seq_gaps: int


def _read(database: Path, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
    # Read-only, so that a test can never be what changes the controller's data.
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return db.execute(sql, params).fetchall()


def device_row(database: Path, device_id: str) -> DeviceRow | None:
    rows = _read(
        database,
        "SELECT heartbeats_stored, last_seq, seq_gaps FROM devices WHERE device_id = ?",
        (device_id,),
    )
    return DeviceRow(*(int(v) for v in rows[0])) if rows else None  # type: ignore[call-overload]


def enrolled(database: Path, device_ids: list[str]) -> set[str]:
    """Which of ``device_ids`` the controller issued a certificate to."""
    marks = ",".join("?" * len(device_ids))
    rows = _read(
        database,
        f"SELECT device_id FROM enrollments WHERE device_id IN ({marks})",
        tuple(device_ids),
    )
    return {str(r[0]) for r in rows}


def token_uses(database: Path, secret: str) -> tuple[int, int]:
    """``(uses, uses_left)`` of the token with ``secret``."""
    rows = _read(
        database,
        "SELECT uses, uses_left FROM enroll_tokens WHERE token_hash = ?",
        (enrollment.hash_secret(secret),),
    )
    return int(rows[0][0]), int(rows[0][1])  # type: ignore[call-overload]


def seed_token(
    database: Path,
    school_id: str,
    *,
    uses: int = 1,
    valid_seconds: int = 3600,
    now: float | None = None,
    revoked: bool = False,
) -> str:
    """Puts an enrollment token in the store as the admin API would; returns its secret."""
    minted_at = time.time() if now is None else now
    token, secret = enrollment.mint(school_id, uses, valid_seconds, minted_at)
    if revoked:
        token = replace(token, revoked_at=minted_at)
    store = open_store(f"sqlite:{database}")
    try:
        store.add_enroll_token(token, enrollment.hash_secret(secret))
    finally:
        store.close()
    return secret


# --- calls --------------------------------------------------------------------------------


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    call: grpc.Call = error  # type: ignore[assignment]
    return call.code(), call.details() or ""


def unary(
    channel: grpc.Channel, path: str, payload: bytes, timeout: float = 10
) -> tuple[grpc.StatusCode, str, bytes]:
    """Sends raw bytes as the request of ``path``: the status, its details, the response."""
    method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
    try:
        response = method(payload, timeout=timeout)
    except grpc.RpcError as exc:
        return (*status_of(exc), b"")
    return grpc.StatusCode.OK, "", response


def stream(
    channel: grpc.Channel, messages: list[bytes], timeout: float = 10
) -> tuple[grpc.StatusCode, str]:
    """Sends ``messages`` up a Connect stream, closes it, and reads it to the end."""
    method: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(CONNECT)
    call = method(iter(messages), timeout=timeout)
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        return status_of(exc)
    return grpc.StatusCode.OK, ""


def tls_channel(port: int, ca: bytes, client: KeyCert | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        ca, client.key if client else None, client.cert if client else None
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=CLIENT_OPTIONS)


# --- raw sockets ------------------------------------------------------------------------

HTTP1_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def client_hello() -> bytes:
    """The first bytes a real TLS client sends (a whole ClientHello record)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def poke(port: int, data: bytes, wait: float = 1.0) -> bytes:
    """Sends ``data`` on a new TCP connection and returns what came back within ``wait``."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                got += chunk
        return got


@contextlib.contextmanager
def silent_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing and stay open while the block runs."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield sockets
    finally:
        for s in sockets:
            s.close()
