"""The front a controller puts before its gRPC ports behind load balancers: what it
takes from a balancer's PROXY v2 header, and what it refuses.

Each test runs a real front on loopback before a small server standing for the gRPC
server, which answers every connection with the client the front noted for it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest
from prometheus_client import CollectorRegistry
from proxyprotocol.result import ProxyResultIPv4, ProxyResultIPv6, ProxyResultLocal, ProxyResultUnix
from proxyprotocol.v2 import ProxyProtocolV2

from controller.proxied.addresses import ClientAddresses, Network, grpc_peer
from controller.proxied.front import REASONS, FrontRefusals, ProxyFront
from controller.proxied.header import Header, HeaderRefused, read_header

LOOPBACK = (ip_network("127.0.0.1/32"),)
ELSEWHERE = (ip_network("198.18.0.0/30"),)
V2 = ProxyProtocolV2()
TLS_HELLO = b"\x16\x03\x01 the first bytes of TLS"


def _header(host: str, port: int) -> bytes:
    if ":" in host:
        dest6 = (IPv6Address("2001:db8::1"), 443)
        return V2.pack(ProxyResultIPv6((IPv6Address(host), port), dest6))
    return V2.pack(ProxyResultIPv4((IPv4Address(host), port), (IPv4Address("198.18.0.1"), 443)))


class Inner:
    """Stands for the gRPC server: says which client the front noted for a connection,
    then echoes; counts the connections it got."""

    def __init__(self, clients: ClientAddresses) -> None:
        self.clients = clients
        self.connections = 0
        self.received = bytearray()
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        host, port = writer.get_extra_info("peername")[:2]
        # As gRPC does: who called is asked once a call's bytes came.
        first = await reader.read(65536)
        writer.write(self.clients.peer(grpc_peer(host, port)).encode() + b"\n")
        data = first
        while data:
            self.received += data
            writer.write(data)
            await writer.drain()
            data = await reader.read(65536)
        writer.close()


Scenario = Callable[[ProxyFront, Inner], Awaitable[None]]


def _refused(registry: CollectorRegistry) -> dict[str, float]:
    return {
        reason: registry.get_sample_value("schoolfleet_front_refused_total", {"reason": reason})
        or 0.0
        for reason in REASONS
    }


def _run(
    scenario: Scenario,
    proxies: tuple[Network, ...] = LOOPBACK,
    timeout: float = 5.0,
    registry: CollectorRegistry | None = None,
) -> Inner:
    refusals = FrontRefusals(registry if registry is not None else CollectorRegistry())

    async def main() -> Inner:
        clients = ClientAddresses()
        inner = Inner(clients)
        server = await asyncio.start_server(inner.serve, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[1]
        front = ProxyFront("127.0.0.1", 0, target, proxies, clients, refusals, header_timeout=0.5)
        front.port = await front.start()
        try:
            await asyncio.wait_for(scenario(front, inner), timeout)
        finally:
            await front.close()
            server.close()
            # The connections the front passed end with it.
            pending = [t for t in inner.tasks if not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=2)
        return inner

    return asyncio.run(main())


async def _connect(front: ProxyFront) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", front.port)


@pytest.mark.parametrize(
    ("host", "seen"),
    [("198.18.4.7", "ipv4:198.18.4.7:40000"), ("2001:db8::7", "ipv6:[2001:db8::7]:40000")],
)
def test_a_balancers_header_names_the_client_and_the_rest_passes_whole(
    host: str, seen: str
) -> None:
    async def scenario(front: ProxyFront, inner: Inner) -> None:
        reader, writer = await _connect(front)
        writer.write(_header(host, 40000) + TLS_HELLO)
        assert await reader.readline() == seen.encode() + b"\n"
        assert await reader.readexactly(len(TLS_HELLO)) == TLS_HELLO
        writer.close()

    inner = _run(scenario)
    assert inner.received == TLS_HELLO, "the header is not passed on"


def test_a_local_header_a_health_check_is_the_balancer_itself() -> None:
    async def scenario(front: ProxyFront, inner: Inner) -> None:
        reader, writer = await _connect(front)
        port = writer.get_extra_info("sockname")[1]
        writer.write(V2.pack(ProxyResultLocal()) + b"a call")
        assert await reader.readline() == f"ipv4:127.0.0.1:{port}\n".encode()
        writer.close()

    _run(scenario)


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad-header"),
        # v1: not what the balancer sends.
        (b"PROXY TCP4 198.18.9.9 198.18.0.1 5 443\r\n", "bad-header"),
        # A version 9.
        (b"\r\n\r\n\x00\r\nQUIT\n\x99\x11\x00\x0c" + b"\x00" * 12, "bad-header"),
        (V2.pack(ProxyResultUnix("/run/a", "/run/b")), "not-ip"),
        # A client speaking straight to gRPC.
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "bad-header"),
    ],
)
def test_a_balancers_connection_without_a_valid_header_is_closed(
    garbage: bytes, reason: str
) -> None:
    async def scenario(front: ProxyFront, inner: Inner) -> None:
        reader, writer = await _connect(front)
        writer.write(garbage + b"more bytes after it")
        assert await reader.read() == b"", "closed, nothing answered"
        writer.close()

    registry = CollectorRegistry()
    inner = _run(scenario, registry=registry)
    assert inner.connections == 0, "nothing reached the gRPC server"
    assert _refused(registry) == {r: float(r == reason) for r in REASONS}


def test_a_header_that_never_ends_is_closed_after_the_timeout() -> None:
    async def scenario(front: ProxyFront, inner: Inner) -> None:
        reader, writer = await _connect(front)
        # The signature, and a length of 65,535 bytes that never come.
        writer.write(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff" + b"\x00" * 100)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await reader.read() == b""
        assert 0.4 < loop.time() - began < 3
        writer.close()

    registry = CollectorRegistry()
    assert _run(scenario, registry=registry).connections == 0
    assert _refused(registry)["timeout"] == 1


def test_a_header_from_anyone_else_is_data_not_an_address() -> None:
    """A client that is not a listed balancer cannot claim another's address: its
    header reaches the gRPC server as bytes (which gRPC refuses), and its own address
    is the one noted."""

    async def scenario(front: ProxyFront, inner: Inner) -> None:
        reader, writer = await _connect(front)
        port = writer.get_extra_info("sockname")[1]
        writer.write(_header("198.18.9.9", 5))
        assert await reader.readline() == f"ipv4:127.0.0.1:{port}\n".encode()
        writer.close()

    inner = _run(scenario, proxies=ELSEWHERE)
    assert inner.received == _header("198.18.9.9", 5)


def test_many_connections_carry_their_bytes_both_ways_and_are_forgotten() -> None:
    payload = bytes(range(256)) * 2048  # 512 KiB each way, in several reads

    async def one(front: ProxyFront, n: int) -> None:
        reader, writer = await _connect(front)
        writer.write(_header(f"198.18.1.{n}", 1000 + n))

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        assert await reader.readline() == f"ipv4:198.18.1.{n}:{1000 + n}\n".encode()
        back = await reader.readexactly(len(payload))
        await sending
        assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
        writer.close()

    async def scenario(front: ProxyFront, inner: Inner) -> None:
        front.forget_after = 0.1
        await asyncio.gather(*(one(front, n) for n in range(1, 21)))
        assert len(front.clients) <= 20
        for _ in range(50):
            if len(front.clients) == 0:
                break
            await asyncio.sleep(0.1)
        assert len(front.clients) == 0, "each connection's client forgotten after it closed"

    inner = _run(scenario, timeout=30)
    assert (inner.connections, len(inner.received)) == (20, 20 * len(payload))


def test_a_balancer_without_send_proxy_fills_neither_the_log_nor_grpc(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every connection of a misconfigured balancer is refused: counted each, logged
    once, and a plain connect check (nothing sent) is not a refusal at all."""

    async def scenario(front: ProxyFront, inner: Inner) -> None:
        for _ in range(30):
            reader, writer = await _connect(front)
            writer.write(TLS_HELLO + b"\x00" * 32)
            assert await reader.read() == b""
            writer.close()
        reader, writer = await _connect(front)
        writer.close()

    registry = CollectorRegistry()
    with caplog.at_level("WARNING", logger="controller.proxied.front"):
        inner = _run(scenario, registry=registry)
    assert inner.connections == 0
    assert _refused(registry) == {**dict.fromkeys(REASONS, 0.0), "bad-header": 30.0}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith("front: bad PROXY header from ipv4:127.0.0.1:"), lines


def test_a_header_is_read_as_its_bytes_come() -> None:
    header = _header("198.18.4.7", 40000)
    for n in range(len(header)):
        assert read_header(header[:n]) is None, n
    assert read_header(header + TLS_HELLO) == Header("ipv4:198.18.4.7:40000", len(header))
    assert read_header(V2.pack(ProxyResultLocal())) == Header(None, 16)
    # Refused at the first byte that cannot be a signature's, not after 16.
    with pytest.raises(HeaderRefused, match="no PROXY v2 signature"):
        read_header(b"\r\n\r\nX")
