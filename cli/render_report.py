"""How schoolctl shows a device's full report: system figures, network, Wi-Fi.

The controller serves these in their wire form; the client reads them into values
(cli/client/reports.py) and here they become plain dicts (with numbers as numbers)
and lines for people.
"""

from __future__ import annotations

from typing import Any

from cli.client.values import NetworkReport, SystemReport


def system_json(s: SystemReport) -> dict[str, Any]:
    """Absent hardware stays None."""
    return {
        "swap_percent": s.swap_percent,
        "filesystems": [
            {
                "mountpoint": f.mountpoint,
                "fstype": f.fstype,
                "total_bytes": f.total_bytes,
                "used_percent": f.used_percent,
            }
            for f in s.filesystems
        ],
        "temperatures_c": dict(s.temperatures),
        "battery_percent": s.battery_percent,
        "on_ac_power": s.on_ac_power,
        "agent_rss_bytes": s.agent_rss_bytes,
        "agent_cpu_percent": s.agent_cpu_percent,
        "kiosk_running": s.kiosk_running,
    }


def network_json(n: NetworkReport) -> dict[str, Any]:
    """Interfaces with their counters, the default route and Wi-Fi."""
    return {
        "interfaces": [
            {
                "name": i.name,
                "state": i.state,
                "mac": i.mac,
                "mtu": i.mtu,
                "addresses": list(i.addresses),
                "speed_mbit": i.speed_mbit,
                "rx_bytes": i.rx_bytes,
                "tx_bytes": i.tx_bytes,
                "rx_errors": i.rx_errors,
                "tx_errors": i.tx_errors,
                "wireless": i.wireless,
            }
            for i in n.interfaces
        ],
        "default_gateway": n.default_gateway or None,
        "default_interface": n.default_interface or None,
        "wifi": [
            {
                "interface": w.interface,
                "bssid": w.bssid,
                "ssid": w.ssid,
                "frequency_mhz": w.frequency_mhz,
                "signal_dbm": w.signal_dbm,
            }
            for w in n.wifi
        ],
        "wifi_status": n.wifi_status,
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def system_rows(s: SystemReport) -> list[tuple[str, str]]:
    """Lines for ``devices show``; absent hardware is said to be absent."""
    rows = [
        ("swap", "none" if s.swap_percent is None else f"{s.swap_percent:.0f}%"),
    ]
    rows += [
        ("filesystem", f"{f.mountpoint} {f.fstype} {f.used_percent:.0f}% of {_size(f.total_bytes)}")
        for f in s.filesystems
    ]
    temps = ", ".join(f"{chip} {celsius:.0f}°C" for chip, celsius in s.temperatures)
    rows.append(("temperatures", temps or "no sensors"))
    if s.battery_percent is not None:
        power = "on AC" if s.on_ac_power else "on battery"
        rows.append(("battery", f"{s.battery_percent:.0f}% {power}"))
    else:
        rows.append(("battery", "none"))
    if s.kiosk_running is not None:
        rows.append(("kiosk", "running" if s.kiosk_running else "[red]not running[/]"))
    rows.append(
        ("agent process", f"{_size(s.agent_rss_bytes)} RSS, {s.agent_cpu_percent:.1f}% CPU")
    )
    return rows


def network_rows(n: NetworkReport) -> list[tuple[str, str]]:
    """Lines for ``devices show``: one per interface, the route, Wi-Fi."""
    rows = []
    for i in n.interfaces:
        speed = f" {i.speed_mbit} Mbit/s" if i.speed_mbit is not None else ""
        errors = f" errors rx {i.rx_errors} tx {i.tx_errors}" if i.rx_errors or i.tx_errors else ""
        rows.append(
            (
                "interface",
                f"{i.name} {i.state}{speed} {i.mac or '-'} mtu {i.mtu} "
                f"{' '.join(i.addresses) or 'no address'} "
                f"rx {_size(i.rx_bytes)} tx {_size(i.tx_bytes)}{errors}",
            )
        )
    route = (
        f"via {n.default_gateway} dev {n.default_interface or '?'}"
        if n.default_gateway
        else "[red]none[/]"
    )
    rows.append(("default route", route))
    if n.wifi:
        rows += [
            (
                "wifi",
                f"{w.interface} {w.ssid!r} bssid {w.bssid} {w.frequency_mhz} MHz "
                f"{w.signal_dbm:.0f} dBm",
            )
            for w in n.wifi
        ]
    else:
        rows.append(("wifi", n.wifi_status or "-"))
    return rows
