"""How a lesson ended, from what its panels said: held, partly held or failed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from controller.lessons.store import PanelResult
from inventory.lessons import FailReason, LessonState


def outcome(
    starts_at: float, panels: Sequence[PanelResult], on_time: float
) -> tuple[LessonState, str]:
    """The lesson's outcome and why, in words for the people who read it.

    Held: every panel showed the lesson by ``starts_at + on_time`` and none failed
    afterwards. Failed: no panel showed it at all. Partly held: anything between.
    """
    if not panels:
        return LessonState.NO_DEVICE, "no panel in the room"
    problems = []
    for p in panels:
        if p.failed_reason:
            problems.append((p.device_id, p.failed_reason))
        elif p.launched_at is None:
            problems.append((p.device_id, FailReason.NOT_REACHED.value))
        elif p.launched_at > starts_at + on_time:
            problems.append((p.device_id, f"late by {p.launched_at - starts_at:.0f}s"))
    if not problems:
        return LessonState.HELD, ""
    if all(p.launched_at is None for p in panels):
        counts = Counter(reason for _, reason in problems)
        reason = ", ".join(f"{r} on {n} of {len(panels)}" for r, n in counts.most_common())
        return LessonState.FAILED, reason
    return LessonState.PARTLY_HELD, "; ".join(f"{d}: {r}" for d, r in problems[:10])
