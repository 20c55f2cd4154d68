"""The device's network as the kernel sees it, read over netlink with pyroute2.

Interfaces (state, MAC, addresses, MTU, speed, counters), the default route, and
the Wi-Fi association where a wireless interface exists.

pyroute2's package ``__init__`` loads every API it has (ndb, ipdb, nftables,
conntrack...); the agent needs IPRoute and IW. :func:`_netlink` loads just those
modules: in the running agent that is ~4.6 MB and ~100 ms of start-up less
(measured in docs/benchmarks.md), on every one of the fleet's devices.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import CollectError

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


def _speed(name: str, sys_net: Path) -> int | None:
    try:
        speed = int((sys_net / name / "speed").read_text().strip())
    except (OSError, ValueError):
        return None  # EINVAL for links without a speed
    return speed if speed > 0 else None


def _is_wireless(name: str, sys_net: Path) -> bool:
    return (sys_net / name / "wireless").exists() or (sys_net / name / "phy80211").exists()


def _interface(link: Any, addresses: dict[int, list[str]], sys_net: Path) -> Interface:
    name = str(link.get("IFLA_IFNAME"))
    stats = link.get("IFLA_STATS64") or {}
    return Interface(
        name=name,
        index=int(link["index"]),
        state=str(link.get("IFLA_OPERSTATE") or "UNKNOWN").lower(),
        mac=str(link.get("IFLA_ADDRESS") or ""),
        mtu=int(link.get("IFLA_MTU") or 0),
        addresses=addresses.get(int(link["index"]), []),
        speed_mbit=_speed(name, sys_net),
        rx_bytes=int(stats.get("rx_bytes", 0)),
        tx_bytes=int(stats.get("tx_bytes", 0)),
        rx_errors=int(stats.get("rx_errors", 0)),
        tx_errors=int(stats.get("tx_errors", 0)),
        wireless=_is_wireless(name, sys_net),
    )


def _netlink() -> tuple[Any, Any, type[Exception]]:
    """pyroute2's IPRoute, IW and NetlinkError, without its package ``__init__``.

    If pyroute2 is not imported yet, its package is registered unexecuted, so that
    importing a submodule loads that submodule's own imports only. These are the
    classes ``pyroute2`` itself exports (tests/test_agent_network.py checks it).
    """
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None:
            sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    from pyroute2.iproute.linux import IPRoute
    from pyroute2.iwutil import IW
    from pyroute2.netlink.exceptions import NetlinkError

    return IPRoute, IW, NetlinkError


def read_network(sys_net: Path = SYS_NET) -> NetworkReport:
    """Reads interfaces, addresses, the default route and Wi-Fi from the kernel."""
    iproute, iw, netlink_error = _netlink()
    try:
        return _read_network(iproute, iw, netlink_error, sys_net)
    except (netlink_error, OSError) as exc:
        raise CollectError(f"network not read over netlink: {exc}") from None


def has_default_route() -> bool:
    """Whether the device has a default route (IPv4 or IPv6): without one, lesson
    content off the school's network cannot be reached. If the kernel cannot be
    asked, says True: a lesson is not refused on a guess.

    pyroute2 runs an event loop of its own, which cannot run inside the agent's, so
    the question is asked from a thread; it takes a few milliseconds, once a lesson.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(_default_route).result(timeout=5)
        except concurrent.futures.TimeoutError:
            log.warning("default route not read over netlink in 5 s")
            return True


def _default_route() -> bool:
    iproute, _, netlink_error = _netlink()
    try:
        with iproute() as ipr:
            return bool(
                ipr.get_default_routes(family=socket.AF_INET)
                or ipr.get_default_routes(family=socket.AF_INET6)
            )
    except (netlink_error, OSError) as exc:
        log.warning("default route not read over netlink: %s", exc)
        return True


def _read_network(
    iproute: Any, iw: Any, netlink_error: type[Exception], sys_net: Path
) -> NetworkReport:
    with iproute() as ipr:
        addresses: dict[int, list[str]] = {}
        for addr in ipr.get_addr():
            addresses.setdefault(int(addr["index"]), []).append(
                f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}"
            )
        interfaces = []
        for link in ipr.get_links():
            try:
                interfaces.append(_interface(link, addresses, sys_net))
            except (KeyError, TypeError, ValueError) as exc:
                # A link that vanished or changed while being read is left out this time.
                log.warning("interface skipped index=%s reason=%r", link.get("index"), exc)
        routes = ipr.get_default_routes(family=socket.AF_INET)
    by_index = {i.index: i.name for i in interfaces}
    gateway = interface = None
    if routes:
        gateway = routes[0].get("RTA_GATEWAY")
        interface = by_index.get(routes[0].get("RTA_OIF"))
    wireless = [i for i in interfaces if i.wireless]
    if not wireless:
        return NetworkReport(interfaces, gateway, interface)
    wifi, status = _read_wifi(iw, netlink_error, wireless)
    return NetworkReport(interfaces, gateway, interface, wifi, status)


def _read_wifi(
    iw: Any, netlink_error: type[Exception], wireless: list[Interface]
) -> tuple[list[Wifi], str]:
    found: list[Wifi] = []
    try:
        with iw() as nl80211:
            for i in wireless:
                bss = nl80211.get_associated_bss(i.index)
                if bss is not None:
                    found.append(wifi_from_bss(i.name, bss.get_attr("NL80211_ATTR_BSS")))
    except netlink_error as exc:
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
