"""The device's network as the kernel sees it.

Interfaces (state, MAC, addresses, MTU, speed, counters), the default route, and
the Wi-Fi association where a wireless interface exists.

Links and their indexes come from ``if_nameindex``; flags, MTU and speed, addresses
and counters from psutil (already loaded for the system report); the operational
state and whether a link is hardware or wireless from sysfs; default routes from the
kernel's text views in ``/proc/net`` (:mod:`agent.routes`). Only a device with a
wireless interface loads pyroute2, for nl80211 (IW). Every device pays for what it
imports in memory, so this matters fleet-wide (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent.errors import CollectError
from agent.routes import Route, ipv4_default_routes, ipv6_default_routes

log = logging.getLogger(__name__)

SYS_NET = Path("/sys/class/net")
PROC_NET = Path("/proc/net")


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


def _hardware(name: str, sys_net: str) -> tuple[bool, bool]:
    """(physical, wireless): a link with a device behind it in sysfs is hardware; the
    rest are made by software (bridges, veths, tunnels, dummies, VLANs)."""
    where = os.path.join(sys_net, name)
    wireless = os.path.exists(os.path.join(where, "wireless")) or os.path.exists(
        os.path.join(where, "phy80211")
    )
    return os.path.exists(os.path.join(where, "device")), wireless


def _operstate(name: str, sys_net: str) -> str | None:
    """The link's RFC 2863 state as ``ip link`` names it; None if the link is gone.

    Read with os.read, not open(): this file is read for every link every heartbeat,
    and a text file object costs twice the syscalls' time.
    """
    try:
        fd = os.open(os.path.join(sys_net, name, "operstate"), os.O_RDONLY)
        try:
            raw = os.read(fd, 64)
        finally:
            os.close(fd)
    except OSError:
        return None
    return raw.decode("ascii", errors="replace").strip() or "unknown"


def _prefix(family: int, netmask: str | None) -> int:
    if netmask is None:
        return 32 if family == socket.AF_INET else 128
    return int.from_bytes(socket.inet_pton(family, netmask.split("%", 1)[0])).bit_count()


def _addresses(found: dict[str, list[Any]]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """("ADDRESS/PREFIX" and MAC by link name) from ``psutil.net_if_addrs()``.

    An IPv4 address with a label ("eth0:1") belongs to the link before the colon (a
    link's name cannot hold one); a link-local IPv6 address loses its "%zone".
    """
    addresses: dict[str, list[str]] = {}
    macs: dict[str, str] = {}
    for label, entries in found.items():
        name = label.split(":", 1)[0]
        for a in entries:
            if a.family == psutil.AF_LINK:
                if name == label:
                    macs[name] = a.address
            elif a.family in (socket.AF_INET, socket.AF_INET6):
                address = a.address.split("%", 1)[0]
                addresses.setdefault(name, []).append(f"{address}/{_prefix(a.family, a.netmask)}")
    return addresses, macs


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
    """Reads the network, heartbeat after heartbeat.

    What sysfs says of a link (hardware, wireless) is read once per link, not every
    heartbeat: on a host with dozens of links those file lookups were most of a read.
    """

    def __init__(self, sys_net: Path = SYS_NET, proc_net: Path = PROC_NET) -> None:
        self._sys_net = str(sys_net)
        self._route = proc_net / "route"
        # (index, name) -> (physical, wireless); a renamed or new link is looked up anew.
        self._hardware: dict[tuple[int, str], tuple[bool, bool]] = {}

    def read(self) -> NetworkReport:
        """Interfaces, addresses, the default route and Wi-Fi, from the kernel."""
        try:
            routes = ipv4_default_routes(self._route.read_text(encoding="ascii", errors="replace"))
            links = socket.if_nameindex()
            stats = psutil.net_if_stats()
            # nowrap=False: a link deleted and made again under its name starts from
            # zero, as the kernel says, not from the old link's counters.
            counters = psutil.net_io_counters(pernic=True, nowrap=False)
            addresses, macs = _addresses(psutil.net_if_addrs())
        except OSError as exc:
            raise CollectError(f"network not read: {exc}") from None
        uplink = routes[0].interface if routes else None
        known, self._hardware = self._hardware, {}
        interfaces = []
        # A link that came between these reads waits for the next heartbeat; one that
        # went is left out, as a dump of the kernel's links would.
        for index, name in links:
            stat, counter = stats.get(name), counters.get(name)
            state = _operstate(name, self._sys_net)
            if stat is None or counter is None or state is None:
                continue
            key = (index, name)
            physical, wireless = known.get(key) or _hardware(name, self._sys_net)
            self._hardware[key] = (physical, wireless)
            flags = stat.flags.split(",")
            # A software link's speed is made up (a veth says 10000, a tun 10) unless it
            # is the uplink (a VLAN on a NIC gives the NIC's): kept only where it means
            # something, and (as sysfs) only while the link is up.
            speed = None
            if (physical or name == uplink) and "up" in flags and stat.speed > 0:
                speed = stat.speed
            interfaces.append(
                Interface(
                    name=name,
                    index=index,
                    state=state,
                    mac=macs.get(name, ""),
                    mtu=stat.mtu,
                    addresses=addresses.get(name, []),
                    speed_mbit=speed,
                    rx_bytes=counter.bytes_recv,
                    tx_bytes=counter.bytes_sent,
                    rx_errors=counter.errin,
                    tx_errors=counter.errout,
                    wireless=wireless,
                    physical=physical,
                    loopback="loopback" in flags,
                )
            )
        names = {i.name for i in interfaces}
        gateway = interface = None
        if routes:
            gateway = routes[0].gateway
            interface = uplink if uplink in names else None
        wireless_links = [i for i in interfaces if i.wireless]
        if not wireless_links:
            return NetworkReport(interfaces, gateway, interface)
        wifi, status = _read_wifi(wireless_links)
        return NetworkReport(interfaces, gateway, interface, wifi, status)

    def close(self) -> None:
        """Nothing is held open between reads; kept for callers that close readers."""


def read_network(sys_net: Path = SYS_NET, proc_net: Path = PROC_NET) -> NetworkReport:
    """One read of the network (``--once``, tests)."""
    return NetworkReader(sys_net, proc_net).read()


def default_routes(proc_net: Path = PROC_NET) -> list[Route]:
    """The default routes, IPv4 (main table) then IPv6 (any table); OSError if the
    kernel's route files cannot be read."""
    v4 = (proc_net / "route").read_text(encoding="ascii", errors="replace")
    v6 = (proc_net / "ipv6_route").read_text(encoding="ascii", errors="replace")
    return ipv4_default_routes(v4) + ipv6_default_routes(v6)


def has_default_route(proc_net: Path = PROC_NET) -> bool:
    """Whether the device has a default route (IPv4 or IPv6): without one, lesson
    content off the school's network cannot be reached. If the kernel's route files
    cannot be read, says True: a lesson is not refused on a guess.

    Two small files from procfs: well under a millisecond, once a lesson.
    """
    try:
        return bool(default_routes(proc_net))
    except OSError as exc:
        log.warning("default route not read: %s", exc)
        return True


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
