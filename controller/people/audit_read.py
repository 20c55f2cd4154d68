"""The audit log's read, one statement for both stores: only the placeholder style
and how a value is tested against a list differ between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controller.people.stored_values import stored_query
from inventory.people import AuditQuery


@dataclass(frozen=True, slots=True)
class Dialect:
    """How a store's database writes a bound parameter and a membership test."""

    # A parameter's placeholder by name (":name", "%(name)s").
    mark: Callable[[str], str]
    # The condition that ``column`` is one of the list bound at ``placeholder``.
    one_of: Callable[[str, str], str]
    # The list as that condition binds it.
    listed: Callable[[list[str]], object]


def audit_select(
    query: AuditQuery, columns: str, dialect: Dialect
) -> tuple[str, dict[str, object]]:
    """The statement and its parameters for ``query``, newest entries first; every
    value is bound, never written into the text."""
    q = stored_query(query)
    mark = dialect.mark
    where: list[str] = []
    params: dict[str, object] = {"limit": q.limit}
    for column in ("actor", "action", "target", "school_id"):
        value = getattr(q, column)
        if value is not None:
            where.append(f"{column} = {mark(column)}")
            params[column] = value
    if q.outcome is not None:
        where.append(f"outcome = {mark('outcome')}")
        params["outcome"] = q.outcome.value
    if q.since is not None:
        where.append(f"at >= {mark('since')}")
        params["since"] = q.since
    if q.visible_schools is not None:
        # A scoped reader sees their schools' entries and their own attempts.
        visible = dialect.one_of("school_id", mark("visible"))
        where.append(f"({visible} OR actor = {mark('reader')})")
        params["visible"] = dialect.listed(sorted(q.visible_schools))
        params["reader"] = q.reader
    sql = f"SELECT {columns} FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + f" ORDER BY entry_id DESC LIMIT {mark('limit')}", params
