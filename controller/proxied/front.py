"""The front: the controller's public ports when it runs behind load balancers.

gRPC's server cannot read a PROXY protocol header, so the front accepts the public
connections, reads the header that a balancer listed in ``proxy_from`` puts first
(HAProxy's ``send-proxy-v2``; its health checks' LOCAL header too), and passes the rest
of the bytes, TLS and all, both ways to the gRPC server's own port on loopback, noting
which client that loopback connection stands for (controller/proxied/addresses.py).
A connection from elsewhere (an agent given the replica's own address) is passed as it
is. A balancer's connection without a valid header within ``HEADER_TIMEOUT`` is closed:
its client is unknown, and a header is never optional from an address that sends them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from proxyprotocol import ProxyProtocolChecksumError, ProxyProtocolSyntaxError
from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.result import is_ipv4, is_ipv6, is_local
from proxyprotocol.v2 import ProxyProtocolV2

from controller.proxied.addresses import ClientAddresses, Network, grpc_peer, within

log = logging.getLogger(__name__)

# Why a balancer's connection was closed before reaching gRPC.
REASONS = ("timeout", "bad-header", "cut-header", "not-ip")
# A misconfigured balancer (no send-proxy-v2) makes every connection a refusal: each
# reason is logged at most this often, with how many there were since.
LOG_EVERY = 10.0

HEADER_TIMEOUT = 5.0
# A connection's client is kept this long after it closes: gRPC may still log or
# audit a call of it.
FORGET_AFTER = 5.0
CHUNK = 256 * 1024


class FrontRefusals:
    """The connections fronts closed for want of a valid PROXY header: counted by
    reason, and logged at most once per LOG_EVERY seconds each."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._counter = Counter(
            "schoolfleet_front_refused",
            "Connections from a balancer in proxy_from closed without reaching gRPC, by "
            "reason: timeout (no header in time), bad-header, cut-header (closed inside "
            "it), not-ip (a header naming no IP client).",
            ["reason"],
            registry=registry,
        )
        for reason in REASONS:
            self._counter.labels(reason)
        self._logged: dict[str, tuple[float, int]] = {}

    def refused(self, reason: str, message: str, now: float) -> None:
        self._counter.labels(reason).inc()
        last, since = self._logged.get(reason, (-LOG_EVERY, 0))
        if now - last < LOG_EVERY:
            self._logged[reason] = (last, since + 1)
            return
        more = f" ({since} more like it since the last)" if since else ""
        log.warning("front: %s%s", message, more)
        self._logged[reason] = (now, 0)


@dataclass
class ProxyFront:
    """Accepts on ``host:port``; passes each connection to ``127.0.0.1:target``."""

    host: str
    port: int
    target: int
    proxies: tuple[Network, ...]
    clients: ClientAddresses
    refusals: FrontRefusals
    header_timeout: float = HEADER_TIMEOUT
    forget_after: float = FORGET_AFTER
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        """Listens; returns the port (the one asked for, or the one picked for 0)."""
        self._server = await asyncio.start_server(
            self._accepted, self.host, self.port, limit=CHUNK, backlog=4096
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Closed with the front: asyncio's server callback would log a cancelled
            # task as an error.
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        direct = grpc_peer(host, port)
        client = await self._client_of(reader, direct) if within(host, self.proxies) else direct
        if client is None:
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.target, limit=CHUNK
            )
        except OSError as exc:
            log.error("front: the gRPC server's port %d refused: %s", self.target, exc)
            return
        local = up_writer.get_extra_info("sockname")[1]
        self.clients.note(local, client)
        try:
            await _pipe_both(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            asyncio.get_running_loop().call_later(
                self.forget_after, self.clients.forget, local, client
            )

    async def _client_of(self, reader: asyncio.StreamReader, balancer: str) -> str | None:
        """The client a balancer's header names; the balancer itself for a LOCAL header
        (its health check); None (counted) when there is no valid header."""
        now = time.monotonic()
        try:
            async with asyncio.timeout(self.header_timeout):
                result = await ProxyProtocolReader(ProxyProtocolV2()).read(reader)
        except asyncio.IncompleteReadError as exc:
            # Nothing at all is a balancer's plain connect check, not a refusal.
            if exc.partial:
                message = f"connection from {balancer} closed inside its PROXY header"
                self.refusals.refused("cut-header", message, now)
            return None
        except TimeoutError:
            message = f"no PROXY header from {balancer} within {self.header_timeout:g} s"
            self.refusals.refused("timeout", message, now)
            return None
        except (ProxyProtocolSyntaxError, ProxyProtocolChecksumError, ValueError) as exc:
            message = f"bad PROXY header from {balancer}: {str(exc)[:200]}"
            self.refusals.refused("bad-header", message, now)
            return None
        if is_local(result):
            return balancer
        if is_ipv4(result) or is_ipv6(result):
            source_host, source_port = result.source
            return grpc_peer(str(source_host), source_port)
        message = f"PROXY header from {balancer} names no IP client: {result!r}"[:300]
        self.refusals.refused("not-ip", message, now)
        return None


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Bytes both ways until both sides are done. A side that ends its half (EOF) has
    that passed on and the other way carries on; a side cut ends both ways."""
    tasks = [
        asyncio.create_task(_pipe(reader, up_writer)),
        asyncio.create_task(_pipe(up_reader, writer)),
    ]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending and all(task.result() for task in done):
            await asyncio.wait(pending)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> bool:
    """Copies until the source's end: True when it ended its half cleanly (passed on to
    the sink), False when either side was cut."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (ConnectionError, OSError):
        return False
    return True
