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

from controller.proxied.addresses import ClientAddresses, Network, grpc_peer, within
from controller.proxied.header import HeaderRefused, read_header

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
    _open: set[_Accepted] = field(default_factory=set)

    async def start(self) -> int:
        """Listens; returns the port (the one asked for, or the one picked for 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Accepted(self), self.host, self.port, backlog=4096
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stops listening and closes every connection it passes."""
        if self._server is not None:
            self._server.close()
        for accepted in list(self._open):
            accepted.close()
        # Their ends come on the loop's next turns; bounded, as a stop must be.
        for _ in range(100):
            if not self._open:
                break
            await asyncio.sleep(0.01)


class _Side(asyncio.Protocol):
    """One side of a passed connection: what it receives goes to ``other``'s
    transport, with flow control both ways, an end of its half passed on, and a cut
    cutting both."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        other = self.other
        if other is None or other.transport is None or other.ended:
            return False
        if other.transport.can_write_eof():
            other.transport.write_eof()
        # Kept open: the other way may still carry bytes.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Accepted(_Side):
    """A connection the front accepted: its client read from a balancer's header (or
    its own address), then a connection to gRPC made and the two joined."""

    def __init__(self, front: ProxyFront) -> None:
        super().__init__()
        self._front = front
        self._peer = ""
        self._header: bytes | None = None  # bytes so far, while a header is awaited
        self._timer: asyncio.TimerHandle | None = None
        self._joining: asyncio.Task[None] | None = None
        self._noted: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._front._open.add(self)
        peername = transport.get_extra_info("peername")
        if not peername:
            # Gone before it was accepted (the kernel could not say from where).
            self.close()
            return
        host, port = peername[:2]
        self._peer = grpc_peer(host, port)
        if within(host, self._front.proxies):
            self._header = b""
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._front.header_timeout, self._timed_out)
        else:
            self._join(self._peer, b"")

    def data_received(self, data: bytes) -> None:
        if self._header is None:
            super().data_received(data)
            return
        self._header += data
        try:
            header = read_header(self._header)
        except HeaderRefused as exc:
            message = f"bad PROXY header from {self._peer}: {exc}"
            if exc.reason == "not-ip":
                message = f"PROXY header from {self._peer}: {exc}"
            self._refuse(exc.reason, message)
            return
        if header is not None:
            rest, self._header = self._header[header.length :], None
            self._cancel_timer()
            self._join(header.client or self._peer, rest)

    def eof_received(self) -> bool:
        if self._header is not None:
            # A balancer's plain connect check sends nothing: not a refusal.
            if self._header:
                self._refuse(
                    "cut-header", f"connection from {self._peer} closed inside its PROXY header"
                )
            return False
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._front._open.discard(self)
        self._cancel_timer()
        if self._joining is not None:
            self._joining.cancel()
        super().connection_lost(exc)
        if self._noted is not None:
            asyncio.get_running_loop().call_later(
                self._front.forget_after, self._front.clients.forget, *self._noted
            )

    def _timed_out(self) -> None:
        timeout = self._front.header_timeout
        self._refuse("timeout", f"no PROXY header from {self._peer} within {timeout:g} s")

    def _refuse(self, reason: str, message: str) -> None:
        self._front.refusals.refused(reason, message, time.monotonic())
        self._header = None
        self._cancel_timer()
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _join(self, client: str, rest: bytes) -> None:
        """Connects to gRPC; what the client sends meanwhile waits in its socket."""
        if self.transport is not None:
            self.transport.pause_reading()
        self._joining = asyncio.get_running_loop().create_task(self._connect(client, rest))

    async def _connect(self, client: str, rest: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, inner = await loop.create_connection(_Side, "127.0.0.1", self._front.target)
        except OSError as exc:
            log.error("front: the gRPC server's port %d refused: %s", self._front.target, exc)
            self.close()
            return
        finally:
            self._joining = None
        if self.transport is None or self.transport.is_closing():
            transport.close()
            return
        local = transport.get_extra_info("sockname")[1]
        self._noted = (local, client)
        self._front.clients.note(local, client)
        inner.other, self.other = self, inner
        if rest:
            transport.write(rest)
        self.transport.resume_reading()
