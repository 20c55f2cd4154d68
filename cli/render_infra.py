"""Access points, unknown BSSIDs and servers for people (rich tables) and for scripts
(plain dicts)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from cli.client.values import InfraTarget, KeyFingerprint
from cli.render import age, iso
from inventory.infra import UnknownBssid

# An access point no device reported for this long is flagged (controller/infra/metrics.py).
UNSEEN_AFTER = 86_400.0
_STATE_STYLE = {"up": "green", "down": "red", "unknown": "yellow"}


def state(t: InfraTarget) -> str:
    """up, down, or unknown (never probed)."""
    if t.latest is None:
        return "unknown"
    return "up" if t.latest.up else "down"


def _probed_at(t: InfraTarget) -> float | None:
    return t.latest.probed_at if t.latest is not None else None


def unseen(t: InfraTarget, now: float) -> bool:
    """No device reported one of the access point's BSSIDs for a day (or ever)."""
    last = t.last_seen_by_device
    return last is None or last < now - UNSEEN_AFTER


def _key_json(key: KeyFingerprint | None) -> dict[str, str] | None:
    if key is None:
        return None
    return {"type": key.key_type, "fingerprint": key.fingerprint}


def _common_json(t: InfraTarget, now: float) -> dict[str, Any]:
    probed = _probed_at(t)
    return {
        "school_id": t.school_id,
        "address": t.address,
        "ssh_user": t.ssh_user,
        "ssh_port": t.ssh_port,
        "state": state(t),
        "reason": _reason(t),
        "probed_at": iso(probed),
        "probe_age_seconds": round(now - probed, 3) if probed is not None else None,
        "facts": dict(t.latest.facts) if t.latest is not None else {},
    }


def ap_json(t: InfraTarget, now: float) -> dict[str, Any]:
    """An access point as a plain dict with ISO times."""
    a = t.access_point
    return {
        "ap_id": t.target_id,
        **_common_json(t, now),
        "room_id": a.room_id,
        "location": a.location,
        "model": a.model,
        "mac": a.mac,
        "bssids": list(a.bssids),
        "devices": t.devices,
        "median_signal_dbm": t.median_signal_dbm,
        "last_seen_by_device": iso(t.last_seen_by_device),
        "unseen_for_a_day": unseen(t, now),
    }


def unknown_json(u: UnknownBssid) -> dict[str, Any]:
    """A BSSID no access point has, as a plain dict with an ISO time."""
    return {
        "school_id": u.school_id,
        "bssid": u.bssid,
        "devices": u.devices,
        "median_signal_dbm": u.median_signal_dbm,
        "last_seen": iso(u.last_seen),
    }


def unknown_table(found: list[UnknownBssid], now: float) -> Table:
    """One row per school and BSSID."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("BSSID", "SCHOOL", "DEVICES"):
        table.add_column(name, no_wrap=True)
    table.add_column("SIGNAL", no_wrap=True, justify="right")
    table.add_column("SEEN", no_wrap=True)
    for u in found:
        signal = u.median_signal_dbm
        table.add_row(
            u.bssid,
            u.school_id,
            str(u.devices),
            f"{signal:.0f} dBm" if signal is not None else "-",
            f"{age(u.last_seen, now)} ago",
        )
    return table


def unknown_hint(count: int) -> str:
    """The line `schoolctl aps list` ends with when devices name BSSIDs no access
    point has."""
    if count == 1:
        return "1 BSSID seen by devices is not in the inventory: schoolctl aps unknown"
    return f"{count} BSSIDs seen by devices are not in the inventory: schoolctl aps unknown"


def server_json(t: InfraTarget, now: float) -> dict[str, Any]:
    """A server as a plain dict with ISO times, and its host keys."""
    return {
        "server_id": t.target_id,
        **_common_json(t, now),
        "pinned_key": _key_json(t.pinned_key),
        "seen_key": _key_json(t.seen_key),
    }


def _state(t: InfraTarget) -> str:
    s = state(t)
    return f"[{_STATE_STYLE[s]}]{s}[/]"


def _why(t: InfraTarget) -> str:
    return escape(t.latest.reason) if t.latest is not None else "never probed"


def aps_table(aps: list[InfraTarget], now: float) -> Table:
    """One row per access point; SEEN is when a device last reported one of its BSSIDs."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("AP", "SCHOOL", "ROOM/LOCATION", "MODEL", "STATE", "PROBED", "DEVICES"):
        table.add_column(name, no_wrap=True)
    table.add_column("SIGNAL", no_wrap=True, justify="right")
    table.add_column("SEEN", no_wrap=True)
    table.add_column("WHY")
    for t in aps:
        a = t.access_point
        where = " · ".join(x for x in (a.room_id, escape(a.location)) if x) or "-"
        signal = t.median_signal_dbm
        seen = age(t.last_seen_by_device, now)
        if unseen(t, now):
            when = "never" if seen == "-" else f"{seen} ago"
            seen = f"[yellow]{when}: not seen by any device for a day[/]"
        table.add_row(
            t.target_id,
            t.school_id,
            where,
            escape(a.model) or "-",
            _state(t),
            age(_probed_at(t), now),
            str(t.devices),
            f"{signal:.0f} dBm" if signal is not None else "-",
            seen,
            _why(t) if state(t) != "up" else "",
        )
    return table


def _reason(t: InfraTarget) -> str:
    return t.latest.reason if t.latest is not None else ""


def _fact(t: InfraTarget, name: str, spec: str, unit: str = "") -> str:
    """A fact the SSH probe read, or '-'."""
    facts = t.latest.facts if t.latest is not None else {}
    return format(facts[name], spec) + unit if name in facts else "-"


def _uptime(t: InfraTarget, now: float) -> str:
    facts = t.latest.facts if t.latest is not None else {}
    return age(now - facts["uptime_seconds"], now) if "uptime_seconds" in facts else "-"


def key_state(t: InfraTarget) -> str:
    """pinned, seen-not-trusted (a key no one trusted yet, or a changed one), or none."""
    if t.seen_key is not None:
        return "seen-not-trusted"
    return "pinned" if t.pinned_key is not None else "none"


def servers_table(servers: list[InfraTarget], now: float) -> Table:
    """One row per server, with the facts its SSH probe read."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ("SERVER", "SCHOOL", "ADDRESS", "STATE", "PROBED", "UPTIME", "LOAD", "MEM", "DISK")
    for name in (*columns, "HOST KEY"):
        table.add_column(name, no_wrap=True)
    table.add_column("WHY")
    for t in servers:
        table.add_row(
            t.target_id,
            t.school_id,
            t.address,
            _state(t),
            age(_probed_at(t), now),
            _uptime(t, now),
            _fact(t, "load1", ".2f"),
            _fact(t, "memory_percent", ".0f", "%"),
            _fact(t, "disk_percent", ".0f", "%"),
            key_state(t),
            _why(t) if state(t) != "up" or _reason(t) else "",
        )
    return table


def server_detail(t: InfraTarget, now: float) -> Table:
    """One server, a field per line: its probe, facts and host keys."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    latest = t.latest
    rows = [
        ("server", t.target_id),
        ("school", t.school_id),
        ("ssh", f"{t.ssh_user}@{t.address}:{t.ssh_port}"),
        (
            "state",
            _state(t) + (f" ({_why(t)})" if _reason(t) else ""),
        ),
        (
            "probed",
            f"{iso(latest.probed_at)} ({age(latest.probed_at, now)} ago, "
            f"{latest.duration_seconds:.2f}s)"
            if latest is not None
            else "never",
        ),
        ("uptime", _uptime(t, now)),
        ("load", " ".join(_fact(t, f"load{n}", ".2f") for n in (1, 5, 15))),
        ("memory", _fact(t, "memory_percent", ".0f", "% used")),
        ("disk", _fact(t, "disk_percent", ".0f", "% used")),
        ("host key", _keys(t)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _keys(t: InfraTarget) -> str:
    lines = []
    if t.pinned_key is not None:
        lines.append(f"pinned: {t.pinned_key.key_type} {t.pinned_key.fingerprint}")
    if t.seen_key is not None:
        k = t.seen_key
        what = "changed, not trusted" if t.pinned_key is not None else "seen, not trusted"
        lines.append(
            f"[yellow]{what}: {k.key_type} {k.fingerprint}[/] "
            f"(if it is the server's: schoolctl servers trust {t.target_id})"
        )
    return "\n".join(lines) or "none seen yet (facts are collected once a key is trusted)"
