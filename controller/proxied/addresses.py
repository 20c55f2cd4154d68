"""The client behind each connection the front passed to the gRPC server.

gRPC names a call's peer by the connection it came on; behind the front that is the
front's own connection on loopback, so the front notes which client each of its
loopback ports stands for, and ``peer_of`` answers with the client. The table is the
process's, as its sockets are: one front, one gRPC server, many services asking.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# gRPC's name for the front's connections, less the port: "ipv4:127.0.0.1:<port>".
_LOOPBACK = "ipv4:127.0.0.1:"


class HasPeer(Protocol):
    def peer(self) -> str: ...


def grpc_peer(host: str, port: int) -> str:
    """A client's address as gRPC writes a peer: ``ipv4:1.2.3.4:5678``,
    ``ipv6:[2001:db8::1]:5678``."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ipv4:{address.ipv4_mapped}:{port}"
        return f"ipv6:[{address}]:{port}"
    return f"ipv4:{address}:{port}"


def networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """``proxy_from`` read (the settings checked each value already)."""
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def within(host: str, allowed: tuple[Network, ...]) -> bool:
    """Whether ``host`` (a socket's address) is in one of ``allowed``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed)


class ClientAddresses:
    """Loopback port of a front's connection -> the client's gRPC peer string."""

    def __init__(self) -> None:
        self._by_port: dict[int, str] = {}

    def note(self, port: int, client: str) -> None:
        self._by_port[port] = client

    def forget(self, port: int, client: str) -> None:
        # Only our own entry: the port may already stand for a newer connection.
        if self._by_port.get(port) == client:
            del self._by_port[port]

    def __len__(self) -> int:
        return len(self._by_port)

    def peer(self, peer: str) -> str:
        """The client a gRPC peer string stands for; the peer itself when it is not one
        of the front's connections."""
        if not peer.startswith(_LOOPBACK):
            return peer
        try:
            port = int(peer[len(_LOOPBACK) :])
        except ValueError:
            return peer
        return self._by_port.get(port, peer)


CLIENTS = ClientAddresses()


def peer_of(context: HasPeer) -> str:
    """Who made a call: its client behind the front, else gRPC's peer."""
    return CLIENTS.peer(context.peer() or "")
