"""How schoolctl shows schools' uplink checks."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from cli.client.values import SchoolUplink
from cli.render import age, iso
from inventory.uplink import UplinkCheck, UplinkState


def check_json(c: UplinkCheck) -> dict[str, Any]:
    return {
        "school_id": c.school_id,
        "state": c.state.value,
        "started_at": iso(c.started_at),
        "device_id": c.device_id,
        "bytes": c.bytes,
        "seconds": None if c.seconds is None else round(c.seconds, 3),
        "mbps": None if c.mbps is None else round(c.mbps, 1),
        "error": c.error,
    }


def check_line(c: UplinkCheck) -> str:
    """One check in a sentence, for people."""
    if c.state is UplinkState.OK:
        return (
            f"school {c.school_id}: {c.mbps or 0:.1f} Mbit/s "
            f"({c.bytes} bytes in {c.seconds or 0:.2f}s, measured by {c.device_id})"
        )
    if c.state is UplinkState.RUNNING:
        return f"school {c.school_id}: a check is running on {c.device_id}"
    return f"school {c.school_id}: check failed on {c.device_id}: {c.error}"


def _mbps(c: UplinkCheck | None, target: float | None = None) -> str:
    if c is None or c.mbps is None:
        return "-"
    text = f"{c.mbps:.1f}"
    return f"[red]{text}[/]" if target is not None and c.mbps < target else text


def uplinks_json(schools: list[SchoolUplink]) -> list[dict[str, Any]]:
    return [
        {
            "school_id": s.school_id,
            "measured": check_json(s.measured) if s.measured else None,
            "latest": check_json(s.latest),
        }
        for s in schools
    ]


def uplinks_table(schools: list[SchoolUplink], now: float) -> Table:
    """One row per school: its measurement, and its latest check if that did not measure."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("SCHOOL", "MBIT/S", "MEASURED", "BY", "LATEST CHECK"):
        table.add_column(name, no_wrap=name != "LATEST CHECK")
    for s in schools:
        m, latest = s.measured, s.latest
        if latest is m or latest.state is UplinkState.OK:
            note = "ok"
        elif latest.state is UplinkState.RUNNING:
            note = f"running on {latest.device_id}"
        else:
            note = f"[red]failed[/] {age(latest.started_at, now)} ago: {escape(latest.error)}"
        table.add_row(
            s.school_id,
            _mbps(m),
            f"{age(m.started_at, now)} ago" if m else "never",
            m.device_id if m else "-",
            note,
        )
    return table


def slow_json(target: float, slow: list[UplinkCheck]) -> dict[str, Any]:
    """For `status --json`: the target and the schools measured under it."""
    return {"uplink_target_mbps": target, "slow_uplinks": [check_json(c) for c in slow]}


def slow_table(target: float, slow: list[UplinkCheck], now: float) -> Table:
    """For `status`: schools whose latest measurement is under the target."""
    table = Table(
        title=f"schools under {target:g} Mbit/s",
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        header_style="bold",
    )
    for name in ("SCHOOL", "MBIT/S", "MEASURED", "BY"):
        table.add_column(name, no_wrap=True)
    for c in slow:
        table.add_row(c.school_id, _mbps(c, target), f"{age(c.started_at, now)} ago", c.device_id)
    return table
