"""Today's lessons counted per school, for /metrics: by state, by whether a panel shows
the ones under way, their panels by result, and each school's day from its first lesson
to its last. One statement each, on either database; the few rows are sorted here, so
both databases give them in the same order (code points, whatever PostgreSQL's locale)."""

from __future__ import annotations

from controller.store.sql import SqlDatabase
from inventory.lessons import LessonState

# A lesson under way is "showing" once a panel launched it; "not-showing" once its
# on-time mark passed without that; "starting" before. Settling then calls the first
# held or partly held and the second failed, so the figures move without a gap.
_UNDER_WAY = """
    SELECT l.school_id,
           CASE WHEN EXISTS (SELECT 1 FROM lesson_panels p
                             WHERE p.lesson_id = l.lesson_id AND p.launched_at IS NOT NULL)
                THEN 'showing'
                WHEN l.starts_at <= :due_before THEN 'not-showing'
                ELSE 'starting' END AS state,
           COUNT(*) AS n
    FROM lessons l
    WHERE l.state = 'dispatched' AND l.starts_at >= :since AND l.starts_at < :until
    GROUP BY 1, 2
"""
# A panel's failure reason wins over its launch, as in lesson_outcome; a panel that said
# nothing by the lesson's on-time mark was not reached (offline, or its answer late).
_PANELS = """
    SELECT l.school_id,
           CASE WHEN COALESCE(p.failed_reason, '') != '' THEN p.failed_reason
                WHEN p.launched_at IS NOT NULL THEN 'launched'
                WHEN l.starts_at <= :due_before THEN 'not-reached'
                ELSE 'pending' END AS result,
           COUNT(*) AS n
    FROM lessons l JOIN lesson_panels p ON p.lesson_id = l.lesson_id
    WHERE l.starts_at >= :since AND l.starts_at < :until
    GROUP BY 1, 2
"""


class SqlLessonCounts:
    """The counting part of a LessonStore on the shared database."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def lesson_counts(self, since: float, until: float) -> list[tuple[str, LessonState, int]]:
        rows = self._db.read(
            "SELECT school_id, state, count(*) AS n FROM lessons "
            "WHERE starts_at >= :since AND starts_at < :until GROUP BY school_id, state",
            {"since": since, "until": until},
        )
        return sorted((r["school_id"], LessonState(r["state"]), r["n"]) for r in rows)

    def lessons_under_way(
        self, since: float, until: float, due_before: float
    ) -> list[tuple[str, str, int]]:
        rows = self._db.read(_UNDER_WAY, {"since": since, "until": until, "due_before": due_before})
        return sorted((r["school_id"], r["state"], r["n"]) for r in rows)

    def lesson_panel_counts(
        self, since: float, until: float, due_before: float
    ) -> list[tuple[str, str, int]]:
        rows = self._db.read(_PANELS, {"since": since, "until": until, "due_before": due_before})
        return sorted((r["school_id"], r["result"], r["n"]) for r in rows)

    def lesson_day_spans(self, since: float, until: float) -> list[tuple[str, float, float]]:
        rows = self._db.read(
            "SELECT school_id, MIN(starts_at) AS first, MAX(ends_at) AS last FROM lessons "
            "WHERE starts_at >= :since AND starts_at < :until GROUP BY school_id",
            {"since": since, "until": until},
        )
        return sorted((r["school_id"], r["first"], r["last"]) for r in rows)
