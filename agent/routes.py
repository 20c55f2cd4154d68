"""Default routes from the kernel's text views of its routing tables.

``/proc/net/route`` (IPv4, the main table only; net/ipv4/fib_trie.c,
``fib_route_seq_show``): a header line, then one tab-separated line per route::

    Iface  Destination  Gateway  Flags  RefCnt  Use  Metric  Mask  MTU  Window  IRTT

with the destination, gateway and mask as 32-bit values in host byte order (``%08X``)
and the flags in hexadecimal. ``/proc/net/ipv6_route`` (every table;
net/ipv6/route.c, ``ipv6_route_native_seq_show``): one line per route, no header::

    dest(32 hex) dest_len(2 hex) src(32 hex) src_len(2 hex) next_hop(32 hex)
    metric(8 hex) refcnt(8 hex) use(8 hex) flags(8 hex) device

Parsing is strict: a line that is not of that form is skipped, never guessed at.
Pure functions of the text; the caller reads the files.
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass

# linux/route.h
RTF_UP, RTF_GATEWAY, RTF_REJECT = 0x0001, 0x0002, 0x0200

_HEX8 = re.compile(r"[0-9A-Fa-f]{8}")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")
_INT = re.compile(r"-?[0-9]{1,10}")
_NO_ADDRESS_V6 = "0" * 32


@dataclass(frozen=True, slots=True)
class Route:
    """A default route: the interface it leaves by, its next hop if any, its metric."""

    interface: str
    gateway: str | None
    metric: int


def _ipv4_default(fields: list[str]) -> Route | None:
    if len(fields) != 11:
        return None
    iface, dest, gateway, flags, _, _, metric, mask = fields[:8]
    hexes = (dest, gateway, mask)
    if not all(_HEX8.fullmatch(f) for f in hexes) or not _HEX4.fullmatch(flags):
        return None
    if not _INT.fullmatch(metric):
        return None
    bits = int(flags, 16)
    # "*": no device (a blackhole); RTF_REJECT: unreachable or prohibit.
    if int(dest, 16) or int(mask, 16) or not bits & RTF_UP or bits & RTF_REJECT or iface == "*":
        return None
    via = None
    if bits & RTF_GATEWAY:
        via = socket.inet_ntop(socket.AF_INET, int(gateway, 16).to_bytes(4, sys.byteorder))
    # The kernel prints the u32 priority with %d: above 2^31 it reads negative.
    return Route(iface, via, int(metric) & 0xFFFFFFFF)


def _ipv6_default(fields: list[str]) -> Route | None:
    if len(fields) != 10:
        return None  # nine: a route without a device
    dest, dest_len, src, src_len, hop, metric, refcnt, use, flags, iface = fields
    well_formed = (
        all(_HEX32.fullmatch(f) for f in (dest, src, hop))
        and all(_HEX2.fullmatch(f) for f in (dest_len, src_len))
        and all(_HEX8.fullmatch(f) for f in (metric, refcnt, use, flags))
    )
    if not well_formed:
        return None
    bits = int(flags, 16)
    # A source-specific default ("default from PREFIX") counts, as in a netlink dump.
    if dest != _NO_ADDRESS_V6 or int(dest_len, 16) or not bits & RTF_UP or bits & RTF_REJECT:
        return None
    via = None
    if hop != _NO_ADDRESS_V6:
        via = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hop))
    return Route(iface, via, int(metric, 16))


def ipv4_default_routes(text: str) -> list[Route]:
    """The default routes in the text of ``/proc/net/route``, lowest metric first."""
    found = [r for line in text.splitlines() if (r := _ipv4_default(line.split()))]
    return sorted(found, key=lambda r: r.metric)


def ipv6_default_routes(text: str) -> list[Route]:
    """The default routes in the text of ``/proc/net/ipv6_route``, lowest metric first."""
    found = [r for line in text.splitlines() if (r := _ipv6_default(line.split()))]
    return sorted(found, key=lambda r: r.metric)
