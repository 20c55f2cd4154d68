"""The device's network as the kernel sees it, read over netlink.

Interfaces (state, MAC, addresses, MTU, speed, counters), the default route, and
the Wi-Fi association where a wireless interface exists.

Links, addresses and routes come from :mod:`agent.netlink` over one socket kept
open; only a device with a wireless interface loads pyroute2, for nl80211 (IW).
Every device pays for what it imports in memory, so this matters fleet-wide
(measured in docs/benchmarks.md).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import CollectError
from agent.netlink import Link, NetlinkFailed, Rtnetlink

log = logging.getLogger(__name__)

SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface and its counters since boot."""

    name: str
    index: int
    state: str
    mac: str
    mtu: int
    addresses: list[str]
    # Mbit/s; None where the driver does not say (virtual links, link down).
    speed_mbit: int | None
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    wireless: bool
    # Hardware (a device behind it in sysfs), as against a link made by software.
    physical: bool = False
    loopback: bool = False


@dataclass(frozen=True, slots=True)
class Wifi:
    """The access point a wireless interface is associated with."""

    interface: str
    bssid: str
    ssid: str
    frequency_mhz: int
    signal_dbm: float


@dataclass(frozen=True, slots=True)
class NetworkReport:
    """Everything network the agent reports; ``wifi_status`` says why ``wifi`` is empty."""

    interfaces: list[Interface]
    default_gateway: str | None
    default_interface: str | None
    wifi: list[Wifi] = field(default_factory=list)
    wifi_status: str = "no wireless"


def _speed(name: str, sys_net: str) -> int | None:
    try:
        with open(os.path.join(sys_net, name, "speed"), encoding="ascii") as f:
            speed = int(f.read().strip())
    except (OSError, ValueError):
        return None  # EINVAL for links without a speed
    return speed if speed > 0 else None


def _hardware(name: str, sys_net: str) -> tuple[bool, bool]:
    """(physical, wireless): a link with a device behind it in sysfs is hardware; the
    rest are made by software (bridges, veths, tunnels, dummies, VLANs)."""
    where = os.path.join(sys_net, name)
    wireless = os.path.exists(os.path.join(where, "wireless")) or os.path.exists(
        os.path.join(where, "phy80211")
    )
    return os.path.exists(os.path.join(where, "device")), wireless


def _iw() -> tuple[Any, type[Exception]]:
    """pyroute2's IW and NetlinkError, without its package ``__init__``.

    Only a device with a wireless interface loads them. If pyroute2 is not imported
    yet, its package is registered unexecuted, so that importing a submodule loads
    that submodule's own imports only (not ndb, ipdb, nftables, conntrack...).
    """
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None:
            sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    from pyroute2.iwutil import IW
    from pyroute2.netlink.exceptions import NetlinkError

    return IW, NetlinkError


class NetworkReader:
    """Reads the network over one netlink socket kept open between reads.

    What sysfs says of a link (hardware, wireless) is read once per link, not every
    heartbeat: on a host with dozens of links those file lookups were most of a read.
    """

    def __init__(self, sys_net: Path = SYS_NET) -> None:
        self._sys_net = str(sys_net)
        self._rtnl = Rtnetlink()
        # (index, name) -> (physical, wireless); a renamed or new link is looked up anew.
        self._hardware: dict[tuple[int, str], tuple[bool, bool]] = {}

    def read(self) -> NetworkReport:
        """Interfaces, addresses, the default route and Wi-Fi, from the kernel."""
        try:
            routes = self._rtnl.default_routes(socket.AF_INET)
            addresses = self._rtnl.addresses()
            links = self._rtnl.links()
        except NetlinkFailed as exc:
            raise CollectError(f"network not read over netlink: {exc}") from None
        uplink = routes[0].oif if routes else None
        known, self._hardware = self._hardware, {}
        interfaces = []
        for link in links:
            key = (link.index, link.name)
            physical, wireless = known.get(key) or _hardware(link.name, self._sys_net)
            self._hardware[key] = (physical, wireless)
            interfaces.append(
                _interface(link, addresses, physical, wireless, uplink, self._sys_net)
            )
        by_index = {i.index: i.name for i in interfaces}
        gateway = interface = None
        if routes:
            gateway = routes[0].gateway
            interface = by_index.get(uplink or -1)
        wireless_links = [i for i in interfaces if i.wireless]
        if not wireless_links:
            return NetworkReport(interfaces, gateway, interface)
        wifi, status = _read_wifi(wireless_links)
        return NetworkReport(interfaces, gateway, interface, wifi, status)

    def close(self) -> None:
        """Closes the netlink socket."""
        self._rtnl.close()


def _interface(
    link: Link,
    addresses: dict[int, list[str]],
    physical: bool,
    wireless: bool,
    uplink: int | None,
    sys_net: str,
) -> Interface:
    rx, tx, rx_errors, tx_errors = link.counters
    # A software link's speed is made up (a veth says 10000, a tun 10) unless it is
    # the uplink (a VLAN on a NIC gives the NIC's): read only where it means something.
    speed = _speed(link.name, sys_net) if physical or link.index == uplink else None
    return Interface(
        name=link.name,
        index=link.index,
        state=link.operstate,
        mac=link.mac,
        mtu=link.mtu,
        addresses=addresses.get(link.index, []),
        speed_mbit=speed,
        rx_bytes=rx,
        tx_bytes=tx,
        rx_errors=rx_errors,
        tx_errors=tx_errors,
        wireless=wireless,
        physical=physical,
        loopback=link.loopback,
    )


def read_network(sys_net: Path = SYS_NET) -> NetworkReport:
    """One read of the network, on a socket of its own (``--once``, tests)."""
    reader = NetworkReader(sys_net)
    try:
        return reader.read()
    finally:
        reader.close()


def has_default_route() -> bool:
    """Whether the device has a default route (IPv4 or IPv6): without one, lesson
    content off the school's network cannot be reached. If the kernel cannot be
    asked, says True: a lesson is not refused on a guess.

    Asked from a thread, so that a kernel slow to answer never holds the agent's
    event loop; it takes well under a millisecond, once a lesson.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(_default_route).result(timeout=10)
        except concurrent.futures.TimeoutError:
            log.warning("default route not read over netlink in 10 s")
            return True


def _default_route() -> bool:
    rtnl = Rtnetlink()
    try:
        return bool(rtnl.default_routes(socket.AF_INET) or rtnl.default_routes(socket.AF_INET6))
    except NetlinkFailed as exc:
        log.warning("default route not read over netlink: %s", exc)
        return True
    finally:
        rtnl.close()


def _read_wifi(wireless: list[Interface]) -> tuple[list[Wifi], str]:
    iw, netlink_error = _iw()
    found: list[Wifi] = []
    try:
        with iw() as nl80211:
            for i in wireless:
                bss = nl80211.get_associated_bss(i.index)
                if bss is not None:
                    found.append(wifi_from_bss(i.name, bss.get_attr("NL80211_ATTR_BSS")))
    except (netlink_error, OSError) as exc:
        return [], f"nl80211 unavailable: {exc}"
    return found, "associated" if found else "not associated"


def wifi_from_bss(interface: str, bss: Any) -> Wifi:
    """The association from an NL80211_ATTR_BSS as pyroute2 decodes it."""
    ies = bss.get_attr("NL80211_BSS_INFORMATION_ELEMENTS") or {}
    ssid = ies.get("SSID", b"") if isinstance(ies, dict) else b""
    # pyroute2 decodes the signal as {"VALUE": mBm, "SIGNAL_STRENGTH": {...}}.
    signal = bss.get_attr("NL80211_BSS_SIGNAL_MBM") or 0
    mbm = signal.get("VALUE", 0) if isinstance(signal, dict) else signal
    return Wifi(
        interface=interface,
        bssid=str(bss.get_attr("NL80211_BSS_BSSID") or ""),
        ssid=ssid.decode(errors="replace") if isinstance(ssid, bytes) else str(ssid),
        frequency_mhz=int(bss.get_attr("NL80211_BSS_FREQUENCY") or 0),
        signal_dbm=int(mbm) / 100,
    )
