"""A small rtnetlink client: dumps of links, addresses and routes, over one socket.

The agent asks the kernel three questions every heartbeat (which links, which
addresses, which default route). pyroute2 answers them with ~140 modules loaded
(~5.7 MiB of every device's memory) and a netlink socket and event loop set up per
read; this module answers them with the standard library, over a socket kept open
between reads. Only the attributes the agent reports are decoded
(linux/if_link.h, linux/if_addr.h, linux/rtnetlink.h).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port
_RTA = struct.Struct("=HH")  # rtattr: length, type
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, ...

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_OPERSTATE, IFLA_STATS64 = 1, 3, 4, 16, 23
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 4, 5, 6, 15
_LINK_ATTRS = frozenset((IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_OPERSTATE, IFLA_STATS64))
IFF_LOOPBACK = 0x8
RT_TABLE_MAIN, RTN_UNICAST = 254, 1
# IF_OPER_* in the order of linux/if.h, as `ip link` prints them (lower case).
_OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
# The start of struct rtnl_link_stats64: rx/tx packets, bytes, errors.
_STATS = struct.Struct("=6Q")
# A dump the kernel marks as interrupted (links changed meanwhile) is asked again.
_DUMP_TRIES = 3
# One recv: large enough for any message the kernel puts in a dump's datagram.
_RECV_BYTES = 1 << 16
# Longest one answer may take: a kernel that does not answer leaves this read.
_TIMEOUT = 5.0


class NetlinkFailed(OSError):
    """The kernel refused or did not answer a request; the message says which."""


@dataclass(frozen=True, slots=True)
class Link:
    """One link as RTM_NEWLINK describes it."""

    index: int
    name: str
    flags: int
    operstate: str
    mac: str
    mtu: int
    # rx_bytes, tx_bytes, rx_errors, tx_errors; zeros where the kernel gave none.
    counters: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def loopback(self) -> bool:
        """IFF_LOOPBACK: the kernel's own loopback, whatever it is called."""
        return bool(self.flags & IFF_LOOPBACK)


@dataclass(frozen=True, slots=True)
class Route:
    """A default route in the main table."""

    family: int
    gateway: str | None
    oif: int | None
    metric: int


@dataclass
class _Dump:
    """Messages of one dump: (type, body) pairs."""

    messages: list[tuple[int, bytes]] = field(default_factory=list)
    interrupted: bool = False


def attributes(
    data: bytes, offset: int = 0, wanted: frozenset[int] | None = None
) -> dict[int, bytes]:
    """rtattrs from ``offset`` on, by type (nested and byte-order flags cleared); only
    the ``wanted`` types if given (a link has ~50 attributes, the agent reads five)."""
    found: dict[int, bytes] = {}
    unpack, end = _RTA.unpack_from, len(data)
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4 or offset + length > end:
            break  # malformed: keep what was read so far
        kind &= 0x3FFF
        if wanted is None or kind in wanted:
            found[kind] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def parse_link(body: bytes) -> Link:
    """An RTM_NEWLINK body."""
    _, _, index, flags, _ = _IFINFO.unpack_from(body)
    attrs = attributes(body, _IFINFO.size, _LINK_ATTRS)
    state = attrs.get(IFLA_OPERSTATE, b"\0")[0]
    stats = attrs.get(IFLA_STATS64, b"")
    counters = (0, 0, 0, 0)
    if len(stats) >= _STATS.size:
        _, _, rx, tx, rx_err, tx_err = _STATS.unpack_from(stats)
        counters = (rx, tx, rx_err, tx_err)
    mtu = attrs.get(IFLA_MTU, b"")
    return Link(
        index=index,
        name=_text(attrs.get(IFLA_IFNAME, b"")),
        flags=flags,
        operstate=_OPERSTATES[state] if state < len(_OPERSTATES) else "unknown",
        mac=":".join(f"{b:02x}" for b in attrs.get(IFLA_ADDRESS, b"")),
        mtu=struct.unpack("=I", mtu)[0] if len(mtu) == 4 else 0,
        counters=counters,
    )


def parse_address(body: bytes) -> tuple[int, str] | None:
    """(interface index, "ADDRESS/PREFIX") of an RTM_NEWADDR body."""
    family, prefix, _, _, index = _IFADDR.unpack_from(body)
    attrs = attributes(body, _IFADDR.size)
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return index, f"{socket.inet_ntop(family, raw)}/{prefix}"


def parse_default_route(body: bytes) -> Route | None:
    """The route of an RTM_NEWROUTE body if it is a default unicast route of table main."""
    family, dst_len, _, _, table, _, _, kind, _ = _RTMSG.unpack_from(body)
    attrs = attributes(body, _RTMSG.size)
    if RTA_TABLE in attrs:
        table = struct.unpack("=I", attrs[RTA_TABLE])[0]
    if dst_len != 0 or kind != RTN_UNICAST or table != RT_TABLE_MAIN:
        return None
    gateway = attrs.get(RTA_GATEWAY)
    oif = attrs.get(RTA_OIF)
    metric = attrs.get(RTA_PRIORITY)
    return Route(
        family=family,
        gateway=socket.inet_ntop(family, gateway) if gateway else None,
        oif=struct.unpack("=I", oif)[0] if oif else None,
        metric=struct.unpack("=I", metric)[0] if metric else 0,
    )


class Rtnetlink:
    """One NETLINK_ROUTE socket, opened on first use and kept; safe across threads.

    A socket that failed is closed and the next request opens a new one.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        """Closes the socket (a later request opens another)."""
        with self._lock:
            self._drop()

    def links(self) -> list[Link]:
        """Every link of the namespace."""
        return _parsed(parse_link, self._dump(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)))

    def addresses(self) -> dict[int, list[str]]:
        """Addresses by interface index, IPv4 and IPv6."""
        found: dict[int, list[str]] = {}
        request = _IFADDR.pack(0, 0, 0, 0, 0)
        for index, address in _parsed(parse_address, self._dump(RTM_GETADDR, request)):
            found.setdefault(index, []).append(address)
        return found

    def default_routes(self, family: int) -> list[Route]:
        """Default routes of the main table, lowest metric first."""
        request = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        routes = _parsed(parse_default_route, self._dump(RTM_GETROUTE, request))
        return sorted(routes, key=lambda r: r.metric)

    def _dump(self, kind: int, body: bytes) -> list[bytes]:
        with self._lock:
            try:
                for _ in range(_DUMP_TRIES):
                    dump = self._ask(kind, body)
                    if not dump.interrupted:
                        break
                return [b for _, b in dump.messages]
            except OSError as exc:
                self._drop()
                raise NetlinkFailed(exc.errno or errno.EIO, f"netlink: {exc}") from None

    def _ask(self, kind: int, body: bytes) -> _Dump:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.settimeout(_TIMEOUT)
            sock.bind((0, 0))
            self._sock = sock
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        header = _NLMSG.pack(
            _NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0
        )
        self._sock.send(header + body)
        dump = _Dump()
        while True:
            for kind_, flags, seq, payload in _messages(self._sock.recv(_RECV_BYTES)):
                if seq != self._seq:
                    continue  # the tail of an earlier request that timed out
                if kind_ == NLMSG_DONE:
                    return dump
                if kind_ == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return dump
                dump.interrupted |= bool(flags & NLM_F_DUMP_INTR)
                dump.messages.append((kind_, payload))

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _parsed(parse: Callable[[bytes], T | None], bodies: list[bytes]) -> list[T]:
    """Each body parsed; one the kernel cut short or that does not parse is left out
    (this read goes on without it), as is one ``parse`` says is not wanted."""
    out = []
    for body in bodies:
        try:
            item = parse(body)
        except (struct.error, IndexError, ValueError) as exc:
            log.warning("netlink message skipped reason=%r", exc)
            continue
        if item is not None:
            out.append(item)
    return out


def _messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, flags, seq, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        yield kind, flags, seq, data[offset + _NLMSG.size : offset + length]
        offset += (length + 3) & ~3
