"""How schoolctl shows things: JSON for scripts, tables for people."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from cli import render_report
from cli.client.reports import network_report, system_report
from inventory.model import Condition, DeviceRecord, DeviceStatus, EnrollToken, KindCount


def iso(seconds: float | None) -> str | None:
    """UTC ISO 8601 time, or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def age(seconds: float | None, now: float) -> str:
    """How long ago, for people: 8s, 5m, 3h, 2d; '-' for never."""
    if seconds is None:
        return "-"
    delta = max(0.0, now - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit}"
    return f"{int(delta)}s"


def device_json(d: DeviceRecord) -> dict[str, Any]:
    """A device as a plain dict with ISO times."""
    health = asdict(d.health) if d.health is not None else None
    if health is not None:
        health["collected_at"] = iso(health["collected_at"])
    identity = asdict(d.identity)
    if d.identity.os is not None:
        identity["os"]["boot_time"] = iso(d.identity.os.boot_time)
    # A JSON object, as the labels were written; asdict gives a list of pairs.
    identity["labels"] = dict(d.identity.labels)
    r = d.report
    return {
        **identity,
        "status": d.status.value,
        "stream_up": d.stream_up,
        "first_seen": iso(d.first_seen),
        "last_heartbeat": iso(d.last_heartbeat),
        "offline_after_seconds": d.offline_after,
        "last_seq": d.last_seq,
        "heartbeats_stored": d.heartbeats_stored,
        "seq_gaps": d.seq_gaps,
        "health": health,
        "condition": r.condition.value if r else None,
        "reasons": list(r.reasons) if r else [],
        "system": render_report.system_json(system_report(r.system)) if r else None,
        "network": render_report.network_json(network_report(r.network)) if r else None,
        "report_at": iso(r.report_at) if r else None,
        "spool": {"pending": r.spool_pending, "dropped": r.spool_dropped} if r else None,
        "enrollment": _enrollment_json(d),
        "recent_commands": [
            {**asdict(c), "finished_at": iso(c.finished_at), "received_at": iso(c.received_at)}
            for c in d.recent_commands
        ],
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _status(status: DeviceStatus) -> str:
    return "[green]online[/]" if status is DeviceStatus.ONLINE else "[red]offline[/]"


_CONDITION_STYLE = {Condition.OK: "green", Condition.DEGRADED: "yellow", Condition.CRITICAL: "red"}


def _condition(d: DeviceRecord) -> str:
    if d.report is None:
        return "-"
    return f"[{_CONDITION_STYLE[d.report.condition]}]{d.report.condition.value}[/]"


def devices_table(devices: list[DeviceRecord], now: float) -> Table:
    """One row per device."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ("DEVICE", "KIND", "SCHOOL", "ROOM", "STATUS", "CONDITION", "SEEN", "CPU", "MEM")
    for name in (*columns, "DISK"):
        table.add_column(name, no_wrap=True)
    for d in devices:
        h = d.health
        table.add_row(
            d.identity.device_id,
            d.identity.kind.value,
            d.identity.school_id,
            d.identity.room_id or "-",
            _status(d.status),
            _condition(d),
            age(d.last_heartbeat, now),
            _pct(h.cpu_percent if h else None),
            _pct(h.memory_percent if h else None),
            _pct(h.disk_percent if h else None),
        )
    return table


def device_detail(d: DeviceRecord, now: float) -> Table:
    """One device, a field per line."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    i = d.identity
    rows = [
        ("device", i.device_id),
        ("kind", i.kind.value),
        ("school", i.school_id),
        ("room", i.room_id or "-"),
        ("hostname", i.hostname or "-"),
        ("agent", i.agent_version or "-"),
        ("os", _os(d)),
        ("address", i.address or "- (none known: not in the Ansible inventory)"),
        # Labels come from the device's config: shown as text, never as markup.
        ("labels", escape(", ".join(f"{k}={v}" for k, v in i.labels)) or "-"),
        ("status", _status(d.status)),
        ("enrollment", _enrollment(d)),
        (
            "condition",
            _condition(d)
            + (f" ({'; '.join(d.report.reasons)})" if d.report and d.report.reasons else ""),
        ),
        ("stream", "up" if d.stream_up else "down"),
        (
            "last heartbeat",
            f"{iso(d.last_heartbeat) or 'never'} ({age(d.last_heartbeat, now)} ago)",
        ),
        ("offline after", f"{d.offline_after:g}s without a heartbeat"),
        ("first seen", iso(d.first_seen) or "-"),
        ("last seq", str(d.last_seq)),
        ("heartbeats", f"{d.heartbeats_stored} stored, {d.seq_gaps} missing"),
    ]
    if d.health is not None:
        h = d.health
        rows += [
            ("cpu", _pct(h.cpu_percent)),
            ("memory", _pct(h.memory_percent)),
            ("disk", _pct(h.disk_percent)),
            ("uptime", age(now - h.uptime_seconds, now)),
            ("load", f"{h.load1:.2f} {h.load5:.2f} {h.load15:.2f}"),
        ]
    if d.report is not None:
        rows.append(("full report", f"{age(d.report.report_at, now)} ago"))
        rows += render_report.system_rows(system_report(d.report.system))
        rows += render_report.network_rows(network_report(d.report.network))
        rows.append(
            ("spool", f"{d.report.spool_pending} waiting, {d.report.spool_dropped} dropped")
        )
    rows += [
        ("command", f"{c.command_id} {c.status} {c.message!r} at {iso(c.received_at)}")
        for c in d.recent_commands
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _enrollment_json(d: DeviceRecord) -> dict[str, Any] | None:
    e = d.enrollment
    if e is None:
        return None
    return {
        "serial": e.serial or None,
        "enrolled_at": iso(e.enrolled_at) if e.serial else None,
        "not_after": iso(e.not_after) if e.serial else None,
        "reenroll_allowed": e.reenroll,
        "decommissioned_at": iso(e.revoked_at),
    }


def _enrollment(d: DeviceRecord) -> str:
    e = d.enrollment
    if e is None:
        return "not enrolled"
    if e.revoked_at is not None:
        state = f"[red]decommissioned {iso(e.revoked_at)}[/]"
    else:
        state = f"enrolled {iso(e.enrolled_at)}, certificate until {iso(e.not_after)}"
    return state + (" (may re-enroll)" if e.reenroll else "")


def _os(d: DeviceRecord) -> str:
    o = d.identity.os
    if o is None:
        return "-"
    name = f"{o.name or 'unknown OS'} {o.version or ''}".strip()
    return f"{name}, kernel {o.kernel}, booted {iso(o.boot_time)}"


def status_json(counts: list[KindCount], computed_at: float) -> dict[str, Any]:
    """Counts per school and kind, with totals."""
    return {
        "computed_at": iso(computed_at),
        "totals": {
            "online": sum(c.online for c in counts),
            "offline": sum(c.offline for c in counts),
        },
        "counts": [
            {
                "school_id": c.school_id,
                "kind": c.kind.value,
                "online": c.online,
                "offline": c.offline,
            }
            for c in counts
        ],
    }


def status_table(counts: list[KindCount]) -> Table:
    """One row per school and kind, and a total."""
    table = Table(box=None, pad_edge=False, header_style="bold", show_footer=True)
    table.add_column("SCHOOL", "total", no_wrap=True)
    table.add_column("KIND", "", no_wrap=True)
    table.add_column("ONLINE", str(sum(c.online for c in counts)), justify="right")
    table.add_column("OFFLINE", str(sum(c.offline for c in counts)), justify="right")
    for c in counts:
        table.add_row(
            c.school_id, c.kind.value, str(c.online), f"[red]{c.offline}[/]" if c.offline else "0"
        )
    return table


def token_json(t: EnrollToken) -> dict[str, Any]:
    """A token as a plain dict with ISO times (never its secret)."""
    return {
        **asdict(t),
        "expires_at": iso(t.expires_at),
        "created_at": iso(t.created_at),
        "revoked_at": iso(t.revoked_at),
    }


def _token_state(t: EnrollToken, now: float) -> str:
    if t.revoked_at is not None:
        return "[red]revoked[/]"
    if now >= t.expires_at:
        return "[yellow]expired[/]"
    if t.uses_left <= 0:
        return "used up"
    return "[green]usable[/]"


def tokens_table(tokens: list[EnrollToken], now: float) -> Table:
    """One row per token."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("TOKEN", "SCHOOL", "STATE", "USES LEFT", "USED", "EXPIRES", "CREATED"):
        table.add_column(name, no_wrap=True, overflow="ignore")
    for t in tokens:
        table.add_row(
            t.token_id,
            t.school_id,
            _token_state(t, now),
            str(t.uses_left),
            str(t.uses),
            f"in {age(now, t.expires_at)}"
            if t.expires_at > now
            else f"{age(t.expires_at, now)} ago",
            f"{age(t.created_at, now)} ago",
        )
    return table
