"""A schedule saved into either database: new lessons added, scheduled ones changed,
the rest left alone, in one transaction (the decisions: controller/lessons/import_plan.py).

Two imports, or an import and a dispatcher, may run at once on several controllers.
The import locks the rows of the lessons it was given that are stored (in the order of
their ids' code points, as dispatch does), so a lesson cannot be dispatched between the
import reading it scheduled and changing it; and it inserts the new ones with ON
CONFLICT DO NOTHING, counting those another import inserted first as stored ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.lessons.import_plan import Stored, import_plan
from controller.lessons.sql_rows import LESSON_COLUMNS, lesson_of, lesson_values
from controller.lessons.store import ImportCounts
from controller.lessons.stored_values import checked_lessons
from controller.store.sql import SqlDatabase, Tx
from inventory.lessons import Lesson, LessonState

# Rows per INSERT of an import, 12 values each. psycopg keeps its parse of a statement
# of at most 50 values and parses a longer one anew each time, which costs more per row
# than the round trips a longer statement saves (20,000 lessons: 2.6 s in rows of 1000,
# 1.6 s in rows of 4).
_INSERT_ROWS = 4


def save_schedule(db: SqlDatabase, lessons: Sequence[Lesson], now: float) -> ImportCounts:
    """LessonStore.save_lessons: ``lessons`` applied in order, in one transaction."""
    checked_lessons(lessons)
    if not lessons:
        return ImportCounts(0, 0, 0, 0)
    keyed = [(x.lesson_id, x) for x in lessons]
    ids = sorted({lesson_id for lesson_id, _ in keyed})
    with db.transaction() as tx:
        stored = _locked(db, tx, ids)
        plan = import_plan(keyed, stored)
        raced = _insert(tx, plan.added, now)
        if raced:
            # Another import added these since the read: they are stored lessons now
            # (committed, or the insert would have waited), counted as such.
            stored.update(_locked(db, tx, raced))
            plan = import_plan(keyed, stored)
        if plan.changed:
            tx.executemany(
                "UPDATE lessons SET school_id = ?, room_id = ?, starts_at = ?, "
                "ends_at = ?, class_name = ?, subject = ?, teacher = ?, "
                "content_url = ?, remote = ?, manual = ?, updated_at = ? "
                "WHERE lesson_id = ?",
                [
                    (*lesson_values(x), now, lesson_id)
                    for lesson_id, x in sorted(plan.changed.items())
                ],
            )
    return plan.counts


def _locked(db: SqlDatabase, tx: Tx, ids: Sequence[str]) -> dict[str, Stored]:
    """The stored lessons among ``ids``, their rows locked (PostgreSQL) until the
    transaction ends: a dispatcher cannot claim one while an import changes it."""
    rows = tx.execute(
        f"SELECT lesson_id, {LESSON_COLUMNS}, state FROM lessons "
        f"WHERE {db.dialect.one_of('lesson_id', ':ids')} "
        f"ORDER BY {db.dialect.by_code_point('lesson_id')}{db.dialect.for_update}",
        {"ids": db.dialect.listed(ids)},
    ).fetchall()
    return {r["lesson_id"]: (lesson_of(r), LessonState(r["state"])) for r in rows}


def _insert(tx: Tx, added: Mapping[str, Lesson], now: float) -> list[str]:
    """Inserts the new lessons; the ids of those another transaction inserted first."""
    raced: list[str] = []
    ids = sorted(added)
    for start in range(0, len(ids), _INSERT_ROWS):
        chunk = ids[start : start + _INSERT_ROWS]
        marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        params: list[Any] = []
        for lesson_id in chunk:
            params += (lesson_id, *lesson_values(added[lesson_id]), now)
        inserted = tx.execute(
            f"INSERT INTO lessons (lesson_id, {LESSON_COLUMNS}, updated_at) "
            f"VALUES {marks} ON CONFLICT (lesson_id) DO NOTHING RETURNING lesson_id",
            params,
        ).fetchall()
        mine = {r["lesson_id"] for r in inserted}
        raced += (i for i in chunk if i not in mine)
    return raced
