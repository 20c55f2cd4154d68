"""The audit log's read: one statement, the filters a reader asked for and the
schools they may see."""

from __future__ import annotations

from controller.people.stored_values import stored_query
from controller.store.sql import Dialect
from inventory.people import AuditQuery


def audit_select(
    query: AuditQuery, columns: str, dialect: Dialect
) -> tuple[str, dict[str, object]]:
    """The statement and its parameters for ``query``, newest entries first; every
    value is bound, never written into the text."""
    q = stored_query(query)
    where: list[str] = []
    params: dict[str, object] = {"limit": q.limit}
    for column in ("actor", "action", "target", "school_id"):
        value = getattr(q, column)
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = value
    if q.outcome is not None:
        where.append("outcome = :outcome")
        params["outcome"] = q.outcome.value
    if q.since is not None:
        where.append("at >= :since")
        params["since"] = q.since
    if q.visible_schools is not None:
        # A scoped reader sees their schools' entries and their own attempts.
        visible = dialect.one_of("school_id", ":visible")
        where.append(f"({visible} OR actor = :reader)")
        params["visible"] = dialect.listed(sorted(q.visible_schools))
        params["reader"] = q.reader
    sql = f"SELECT {columns} FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY entry_id DESC LIMIT :limit", params
