"""What a full report carries, and its bounds, so that its size does not grow with
the host: a shared machine with dozens of container links or mounts still sends a
report of a few hundred bytes.

Interfaces reported (the rest stay visible locally, in ``--once``):

- the interface of the default route (the uplink), whatever it is: a bridge or a
  tunnel that carries the uplink is the one that matters;
- wireless interfaces;
- hardware interfaces (a device behind them in sysfs), up or down: a pulled cable is
  news, and a device has few of them;
- never loopback, and no other software link (veths, bridges, dummies, tunnels, ifb,
  VLANs) that does not carry the default route.

At most ``MAX_INTERFACES`` of them, in that order of priority (hardware that is up
before hardware that is down), each with at most ``MAX_ADDRESSES`` addresses (global
before link-local). Filesystems, temperatures, reasons and long names are capped
too, so a full heartbeat never passes ``HARD_BOUND_BYTES`` (tests/test_report_limits.py
builds the largest one possible).
"""

from __future__ import annotations

from dataclasses import replace

from agent.network import Interface, NetworkReport, Wifi
from agent.system import Filesystem

MAX_INTERFACES = 6
MAX_ADDRESSES = 4
MAX_FILESYSTEMS = 6
MAX_TEMPERATURES = 6
MAX_REASONS = 8
# Longest text kept from a field with no kernel limit (a mount point, a chip's name,
# a reason naming them); cut text ends with "…".
MAX_TEXT = 96
# The largest AgentMessage a full heartbeat can make with these limits.
HARD_BOUND_BYTES = 6144


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """``text``, shortened to ``limit`` characters with an ellipsis if longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rank(i: Interface, uplink: str | None) -> int | None:
    """Order of priority of an interface in the report; None: not reported."""
    if i.name == uplink:
        return 0
    if i.loopback:
        return None
    if i.wireless:
        return 1
    if i.physical:
        return 2 if i.state == "up" else 3
    return None


def _addresses(addresses: list[str]) -> list[str]:
    # Link-local IPv6 addresses (fe80::/10) are derived from the MAC: the least news.
    ordered = sorted(addresses, key=lambda a: a.lower().startswith("fe80:"))
    return ordered[:MAX_ADDRESSES]


def reported_interfaces(network: NetworkReport) -> list[Interface]:
    """The interfaces that matter, by the rules above, in order of priority."""
    ranked: list[tuple[int, int, Interface]] = []
    for i in network.interfaces:
        rank = _rank(i, network.default_interface)
        if rank is not None:
            ranked.append((rank, i.index, i))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [
        replace(i, addresses=_addresses(i.addresses)) if len(i.addresses) > MAX_ADDRESSES else i
        for _, _, i in ranked[:MAX_INTERFACES]
    ]


def reported_wifi(network: NetworkReport, interfaces: list[Interface]) -> list[Wifi]:
    """The associations of the reported interfaces."""
    names = {i.name for i in interfaces}
    return [w for w in network.wifi if w.interface in names]


def reported_filesystems(filesystems: list[Filesystem]) -> list[Filesystem]:
    """The fullest filesystems first, at most ``MAX_FILESYSTEMS``, with "/" always in."""
    ordered = sorted(filesystems, key=lambda fs: (fs.mountpoint != "/", -fs.used_percent))
    return ordered[:MAX_FILESYSTEMS]


def reported_temperatures(temperatures: dict[str, float]) -> list[tuple[str, float]]:
    """The hottest chips, at most ``MAX_TEMPERATURES``, by name."""
    hottest = sorted(temperatures.items(), key=lambda t: -t[1])[:MAX_TEMPERATURES]
    return sorted(hottest)
