"""Hostile clients' side of the wire: hand-made protobuf, raw gRPC calls, raw sockets.

Hypothesis strategies for bytes that look like protobuf and for AgentMessages with
wild field values; the varint and tag helpers to write malformed messages by hand;
calls that send raw bytes to any method and return the status they got; TLS channels
with any client identity; and plain TCP connections that send garbage or nothing at
all. Everything here talks to a real controller over loopback.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from protos.schoolfleet.v1 import admin_pb2, agent_pb2
from tests.hostile_pki import KeyCert

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
# Short names for the statuses the tests expect.
UNAVAILABLE, UNAUTHENTICATED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED
INVALID, DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED

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


def nested_groups(depth: int) -> bytes:
    """Unknown field 99 as groups inside groups, ``depth`` deep: a parser that recursed
    without a limit would run out of stack."""
    return tag(99, SGROUP) * depth + tag(99, EGROUP) * depth


def nested_unknown(depth: int) -> bytes:
    """Unknown field 99 as length-delimited fields inside each other, ``depth`` deep."""
    inner = b""
    for _ in range(depth):
        inner = length_delimited(99, inner)
    return inner


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


# --- HTTP/2 by hand, for headers no gRPC client sends ---------------------------------


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([value])
    out, value = bytearray([top]), value - top
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal without indexing, with a new name and no Huffman coding."""
    return b"\x00" + _hpack_int(len(name)) + name + _hpack_int(len(value)) + value


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream_id.to_bytes(4, "big")
        + payload
    )


def raw_h2_call(
    port: int, path: str, metadata: list[tuple[bytes, bytes]], message: bytes, wait: float = 2.0
) -> bytes:
    """One gRPC call over plaintext HTTP/2 written by hand, so that its metadata may hold
    any bytes at all (gRPC's clients refuse to send what is not printable ASCII);
    returns the raw bytes that came back within ``wait``."""
    headers = b"".join(
        _hpack_literal(n, v)
        for n, v in [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", f"127.0.0.1:{port}".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *metadata,
        ]
    )
    chunks = [headers[i : i + 16_384] for i in range(0, len(headers), 16_384)]
    frames = HTTP2_PREFACE + _frame(4, 0, 0, b"")
    for n, chunk in enumerate(chunks):
        last = 0x4 if n == len(chunks) - 1 else 0
        frames += _frame(1 if n == 0 else 9, last, 1, chunk)
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    frames += _frame(0, 0x1, 1, body)
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(frames)
        got = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                got += chunk
        return got
