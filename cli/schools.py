"""Naming a school that does not exist, instead of answering it with an empty list.

The schools are those the controller lists in its fleet status, which it answers within
the caller's scope: a school-it user is told only of their own schools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli.errors import NotFound

if TYPE_CHECKING:
    from cli.client.admin import AdminClient


def unknown_school(school: str, known: list[str]) -> str | None:
    """The line for a school that is not among ``known``; None when it is."""
    if school in known:
        return None
    listed = ", ".join(known) if known else "none with devices yet"
    return f"no school {school!r}; schools: {listed}"


def require_school(c: AdminClient, school: str | None) -> None:
    """Raises NotFound naming ``school`` if the controller has no devices there
    (called when a filtered list came back empty)."""
    if school is None:
        return
    known = sorted({count.school_id for count in c.fleet.status().counts})
    problem = unknown_school(school, known)
    if problem is not None:
        raise NotFound(problem)
