"""A panel's lesson event stored inside the devices' batch transaction: the device's
sequence moved, the event kept (written out where PostgreSQL could not hold it:
controller/lessons/stored_values.py), and what it says of the lesson's panel."""

from __future__ import annotations

from controller.lessons.stored_values import storable_id, stored_event
from controller.store.rows import LessonEventRow, StoredLessonEvent
from controller.store.sql import Tx
from inventory.lessons import EventKind, LessonEvent

# A device's messages share one sequence: a lesson event moves it like a command result.
_EVENT_SEQ_SQL = """
    UPDATE devices SET
        seq_gaps = seq_gaps + CASE WHEN last_seq > 0 THEN :seq - last_seq - 1 ELSE 0 END,
        last_seq = :seq
    WHERE device_id = :device AND last_seq < :seq
"""


def record_event(tx: Tx, r: LessonEventRow) -> StoredLessonEvent | None:
    """Inside the devices' record_messages transaction ``tx``: stores a new
    event and what it means for the lesson's panel; None for a replayed one."""
    if not storable_id(r.device_id):
        return None
    e = stored_event(r.event)
    if not tx.execute(_EVENT_SEQ_SQL, {"device": r.device_id, "seq": r.seq}).rowcount:
        return None
    tx.execute(
        "INSERT INTO lesson_events (device_id, seq, lesson_id, command_id, kind, reason, "
        "message, at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            r.device_id,
            r.seq,
            e.lesson_id,
            e.command_id,
            e.kind.value,
            e.reason.value if e.reason else None,
            e.message,
            e.at,
            r.received_at,
        ),
    )
    _panel_said(tx, e, r.device_id)
    # The outbox keeps offering the launch until the lesson ends, answered or not:
    # a panel that restarts mid-lesson shows it again, and one that did not
    # restart recognises the command id and does nothing.
    lesson = tx.execute(
        "SELECT school_id, starts_at FROM lessons WHERE lesson_id = ?", (e.lesson_id,)
    ).fetchone()
    if lesson is None:
        return None
    return StoredLessonEvent(r.event, lesson["school_id"], lesson["starts_at"])


def _panel_said(tx: Tx, e: LessonEvent, device_id: str) -> None:
    panel = (e.lesson_id, device_id)
    if e.kind is EventKind.LAUNCHED:
        tx.execute(
            "UPDATE lesson_panels SET launched_at = coalesce(launched_at, ?) "
            "WHERE lesson_id = ? AND device_id = ?",
            (e.at, *panel),
        )
    elif e.kind is EventKind.FAILED:
        tx.execute(
            "UPDATE lesson_panels SET failed_reason = ?, failed_at = ? "
            "WHERE lesson_id = ? AND device_id = ?",
            (e.reason.value if e.reason else "", e.at, *panel),
        )
    elif e.kind is EventKind.ENDED:
        tx.execute(
            "UPDATE lesson_panels SET ended_at = ? WHERE lesson_id = ? AND device_id = ?",
            (e.at, *panel),
        )
