"""What saving a schedule does to the stored lessons, decided from plain values: which
lessons are added, which scheduled ones change, and the counts the import reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.lessons.store import ImportCounts
from inventory.lessons import Lesson, LessonState

# A stored lesson as the plan needs it: its values and its state.
Stored = tuple[Lesson, LessonState]


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """The rows to insert and to update, by lesson id, and what the import counts."""

    counts: ImportCounts
    added: dict[str, Lesson]
    changed: dict[str, Lesson]


def import_plan(lessons: Iterable[tuple[str, Lesson]], stored: Mapping[str, Stored]) -> ImportPlan:
    """Applies ``lessons`` (each with its id, formatted once by the caller: thousands
    may come at once) in order to the ``stored`` ones: a new lesson is added, a
    scheduled one with other values changed, one dispatched or over left alone
    (locked). A lesson given twice is applied twice, the second seeing the first."""
    current = dict(stored)
    added: dict[str, Lesson] = {}
    changed: dict[str, Lesson] = {}
    n_added = n_updated = n_unchanged = n_locked = 0
    for lesson_id, lesson in lessons:
        found = current.get(lesson_id)
        if found is None:
            added[lesson_id] = lesson
            n_added += 1
        elif found[0] == lesson:
            n_unchanged += 1
            continue
        elif found[1] != LessonState.SCHEDULED:
            n_locked += 1
            continue
        else:
            # Added earlier in this same import: the insert takes the later values.
            (added if lesson_id in added else changed)[lesson_id] = lesson
            n_updated += 1
        current[lesson_id] = (lesson, LessonState.SCHEDULED)
    counts = ImportCounts(n_added, n_updated, n_unchanged, n_locked)
    return ImportPlan(counts, added, changed)
