"""Access points, unknown BSSIDs and servers for people (rich tables) and for scripts
(plain dicts)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from cli.render import age, iso
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import seconds

# An access point no device reported for this long is flagged (controller/infra/metrics.py).
UNSEEN_AFTER = 86_400.0
_STATE_STYLE = {"up": "green", "down": "red", "unknown": "yellow"}


def state(t: admin_pb2.InfraTarget) -> str:
    """up, down, or unknown (never probed)."""
    if not t.HasField("latest"):
        return "unknown"
    return "up" if t.latest.up else "down"


def _probed_at(t: admin_pb2.InfraTarget) -> float | None:
    return seconds(t.latest.probed_at) if t.HasField("latest") else None


def _last_seen(t: admin_pb2.InfraTarget) -> float | None:
    return seconds(t.last_seen_by_device) if t.HasField("last_seen_by_device") else None


def unseen(t: admin_pb2.InfraTarget, now: float) -> bool:
    """No device reported one of the access point's BSSIDs for a day (or ever)."""
    last = _last_seen(t)
    return last is None or last < now - UNSEEN_AFTER


def _signal(t: admin_pb2.InfraTarget) -> float | None:
    return t.median_signal_dbm if t.HasField("median_signal_dbm") else None


def _key_json(t: admin_pb2.InfraTarget, field: str) -> dict[str, str] | None:
    if not t.HasField(field):  # type: ignore[arg-type]
        return None
    key: admin_pb2.HostKeyInfo = getattr(t, field)
    return {"type": key.key_type, "fingerprint": key.fingerprint}


def _common_json(t: admin_pb2.InfraTarget, now: float) -> dict[str, Any]:
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
        "facts": dict(t.latest.facts) if t.HasField("latest") else {},
    }


def ap_json(t: admin_pb2.InfraTarget, now: float) -> dict[str, Any]:
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
        "median_signal_dbm": _signal(t),
        "last_seen_by_device": iso(_last_seen(t)),
        "unseen_for_a_day": unseen(t, now),
    }


def _unknown_signal(u: admin_pb2.UnknownBssid) -> float | None:
    return u.median_signal_dbm if u.HasField("median_signal_dbm") else None


def unknown_json(u: admin_pb2.UnknownBssid) -> dict[str, Any]:
    """A BSSID no access point has, as a plain dict with an ISO time."""
    return {
        "school_id": u.school_id,
        "bssid": u.bssid,
        "devices": u.devices,
        "median_signal_dbm": _unknown_signal(u),
        "last_seen": iso(seconds(u.last_seen)),
    }


def unknown_table(found: list[admin_pb2.UnknownBssid], now: float) -> Table:
    """One row per school and BSSID."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("BSSID", "SCHOOL", "DEVICES"):
        table.add_column(name, no_wrap=True)
    table.add_column("SIGNAL", no_wrap=True, justify="right")
    table.add_column("SEEN", no_wrap=True)
    for u in found:
        signal = _unknown_signal(u)
        table.add_row(
            u.bssid,
            u.school_id,
            str(u.devices),
            f"{signal:.0f} dBm" if signal is not None else "-",
            f"{age(seconds(u.last_seen), now)} ago",
        )
    return table


def unknown_hint(count: int) -> str:
    """The line `schoolctl aps list` ends with when devices name BSSIDs no access
    point has."""
    if count == 1:
        return "1 BSSID seen by devices is not in the inventory: schoolctl aps unknown"
    return f"{count} BSSIDs seen by devices are not in the inventory: schoolctl aps unknown"


def server_json(t: admin_pb2.InfraTarget, now: float) -> dict[str, Any]:
    """A server as a plain dict with ISO times, and its host keys."""
    return {
        "server_id": t.target_id,
        **_common_json(t, now),
        "pinned_key": _key_json(t, "pinned_key"),
        "seen_key": _key_json(t, "seen_key"),
    }


def _state(t: admin_pb2.InfraTarget) -> str:
    s = state(t)
    return f"[{_STATE_STYLE[s]}]{s}[/]"


def _why(t: admin_pb2.InfraTarget) -> str:
    return escape(t.latest.reason) if t.HasField("latest") else "never probed"


def aps_table(aps: list[admin_pb2.InfraTarget], now: float) -> Table:
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
        signal = _signal(t)
        seen = age(_last_seen(t), now)
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


def _reason(t: admin_pb2.InfraTarget) -> str:
    return t.latest.reason if t.HasField("latest") else ""


def _fact(t: admin_pb2.InfraTarget, name: str, spec: str, unit: str = "") -> str:
    """A fact the SSH probe read, or '-'."""
    facts = t.latest.facts if t.HasField("latest") else {}
    return format(facts[name], spec) + unit if name in facts else "-"


def _uptime(t: admin_pb2.InfraTarget, now: float) -> str:
    facts = t.latest.facts if t.HasField("latest") else {}
    return age(now - facts["uptime_seconds"], now) if "uptime_seconds" in facts else "-"


def key_state(t: admin_pb2.InfraTarget) -> str:
    """pinned, seen-not-trusted (a key no one trusted yet, or a changed one), or none."""
    if t.HasField("seen_key"):
        return "seen-not-trusted"
    return "pinned" if t.HasField("pinned_key") else "none"


def servers_table(servers: list[admin_pb2.InfraTarget], now: float) -> Table:
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


def server_detail(t: admin_pb2.InfraTarget, now: float) -> Table:
    """One server, a field per line: its probe, facts and host keys."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    probed = _probed_at(t)
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
            f"{iso(probed)} ({age(probed, now)} ago, {t.latest.duration_seconds:.2f}s)"
            if probed is not None
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


def _keys(t: admin_pb2.InfraTarget) -> str:
    lines = []
    if t.HasField("pinned_key"):
        lines.append(f"pinned: {t.pinned_key.key_type} {t.pinned_key.fingerprint}")
    if t.HasField("seen_key"):
        k = t.seen_key
        what = "changed, not trusted" if t.HasField("pinned_key") else "seen, not trusted"
        lines.append(
            f"[yellow]{what}: {k.key_type} {k.fingerprint}[/] "
            f"(if it is the server's: schoolctl servers trust {t.target_id})"
        )
    return "\n".join(lines) or "none seen yet (facts are collected once a key is trusted)"
