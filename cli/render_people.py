"""How schoolctl shows users and the audit log."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from cli.render import age, iso
from inventory.people import AuditEntry, Outcome, User


def user_json(u: User) -> dict[str, Any]:
    return {
        "name": u.name,
        "role": u.role.value,
        "schools": list(u.schools),
        "created_at": iso(u.created_at),
        "created_by": u.created_by,
        "expires_at": iso(u.expires_at),
        "revoked_at": iso(u.revoked_at),
    }


def _user_state(u: User, now: float) -> str:
    if u.revoked_at is not None:
        return "[red]revoked[/]"
    if not u.active(now):
        return "[yellow]expired[/]"
    return "[green]active[/]"


def users_table(users: list[User], now: float) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("USER", "ROLE", "SCHOOLS", "STATE", "EXPIRES", "CREATED", "BY"):
        table.add_column(name, no_wrap=True, overflow="ignore")
    for u in users:
        table.add_row(
            u.name,
            u.role.value,
            ",".join(u.schools) or "all",
            _user_state(u, now),
            iso(u.expires_at) or "never",
            f"{age(u.created_at, now)} ago",
            u.created_by,
        )
    return table


def audit_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "entry_id": e.entry_id,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "school_id": e.school_id,
        "outcome": e.outcome.value,
        "message": e.message,
        "peer": e.peer,
    }


_OUTCOME_STYLE = {Outcome.OK: "green", Outcome.DENIED: "red", Outcome.FAILED: "yellow"}


def audit_table(entries: list[AuditEntry]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("TIME", "ACTOR", "ACTION", "TARGET", "SCHOOL", "OUTCOME", "PEER", "MESSAGE"):
        table.add_column(name, no_wrap=name != "MESSAGE")
    for e in entries:
        table.add_row(
            iso(e.at),
            escape(e.actor),
            e.action,
            escape(e.target) or "-",
            escape(e.school_id) or "-",
            f"[{_OUTCOME_STYLE[e.outcome]}]{e.outcome.value}[/]",
            escape(e.peer),
            escape(e.message),
        )
    return table
