"""A PROXY protocol v2 header read from the first bytes of a balancer's connection:
pure, on bytes; the front (controller/proxied/front.py) feeds it what has arrived."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxyprotocol import ProxyProtocolChecksumError, ProxyProtocolSyntaxError
from proxyprotocol.result import is_ipv4, is_ipv6, is_local
from proxyprotocol.v2 import ProxyProtocolV2

from controller.proxied.addresses import grpc_peer

_V2 = ProxyProtocolV2()
_FIXED = 16
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass(frozen=True, slots=True)
class Header:
    """A complete header: the client it names (gRPC's peer notation), None for LOCAL
    (the balancer's own connection, such as its health check); its length in bytes."""

    client: str | None
    length: int


class HeaderRefused(ValueError):
    """No valid header: ``reason`` is one of front.REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def read_header(data: bytes) -> Header | None:
    """The header at the start of ``data``; None while more bytes are needed (at most
    16 + 65,535 in all); HeaderRefused as soon as the bytes cannot be one."""
    if data[: len(SIGNATURE)] != SIGNATURE[: len(data)]:
        raise HeaderRefused("bad-header", "no PROXY v2 signature")
    if len(data) < _FIXED:
        return None
    try:
        fixed = _V2.unpack_header(data[:_FIXED])
    except ProxyProtocolSyntaxError as exc:
        raise HeaderRefused("bad-header", str(exc)) from None
    end = _FIXED + fixed.data_len
    if len(data) < end:
        return None
    try:
        result = _V2.unpack(data[:end])
    except (ProxyProtocolSyntaxError, ProxyProtocolChecksumError, ValueError, struct.error) as exc:
        raise HeaderRefused("bad-header", str(exc)[:200] or type(exc).__name__) from None
    if is_local(result):
        return Header(None, end)
    if is_ipv4(result) or is_ipv6(result):
        host, port = result.source
        return Header(grpc_peer(str(host), port), end)
    raise HeaderRefused("not-ip", f"a header naming no IP client: {result!r}"[:200])
