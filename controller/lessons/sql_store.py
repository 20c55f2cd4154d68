"""The lesson schedule, its outbox and the panels' answers in the SQLite store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from controller.errors import StoreError
from controller.lessons.store import ImportCounts, LessonQuery, OutboxCommand, PanelResult, Room
from controller.store.rows import LessonEventRow, StoredLessonEvent
from controller.store.sql import SqlDatabase, Tx
from inventory.lessons import EventKind, Lesson, LessonRecord, LessonState

_LESSON_COLUMNS = (
    "school_id, room_id, starts_at, ends_at, class_name, subject, teacher, content_url, "
    "remote, manual"
)
# A device's messages share one sequence: a lesson event moves it like a command result.
_EVENT_SEQ_SQL = """
    UPDATE devices SET
        seq_gaps = seq_gaps + CASE WHEN last_seq > 0 THEN ?2 - last_seq - 1 ELSE 0 END,
        last_seq = ?2
    WHERE device_id = ?1 AND last_seq < ?2
"""


def _lesson(r: sqlite3.Row) -> Lesson:
    return Lesson(
        school_id=r["school_id"],
        room_id=r["room_id"],
        starts_at=r["starts_at"],
        ends_at=r["ends_at"],
        class_name=r["class_name"],
        subject=r["subject"],
        teacher=r["teacher"],
        content_url=r["content_url"],
        remote=bool(r["remote"]),
        manual=bool(r["manual"]),
    )


def _values(lesson: Lesson) -> tuple[object, ...]:
    x = lesson
    return (
        x.school_id,
        x.room_id,
        x.starts_at,
        x.ends_at,
        x.class_name,
        x.subject,
        x.teacher,
        x.content_url,
        int(x.remote),
        int(x.manual),
    )


def _rooms_json(rooms: Iterable[Room]) -> str:
    return json.dumps(sorted({f"{s}\x1f{r}" for s, r in rooms}))


class SqlLessons:
    """A LessonStore on the shared SQLite file."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def known_rooms(self, rooms: Iterable[Room]) -> set[Room]:
        rows = self._db.read(
            "SELECT school_id, room_id FROM rooms WHERE school_id || char(31) || room_id "
            "IN (SELECT value FROM json_each(:rooms))",
            {"rooms": _rooms_json(rooms)},
        )
        return {(r["school_id"], r["room_id"]) for r in rows}

    def add_room(self, school_id: str, room_id: str) -> None:
        self._db.write("INSERT OR IGNORE INTO rooms VALUES (?, ?)", (school_id, room_id))

    def lessons_in_rooms(
        self, rooms: Iterable[Room], since: float, until: float
    ) -> dict[Room, list[Lesson]]:
        rows = self._db.read(
            f"SELECT {_LESSON_COLUMNS} FROM lessons WHERE school_id || char(31) || room_id "
            "IN (SELECT value FROM json_each(:rooms)) AND starts_at < :until AND ends_at > :since "
            "ORDER BY starts_at",
            {"rooms": _rooms_json(rooms), "since": since, "until": until},
        )
        found: dict[Room, list[Lesson]] = {}
        for r in rows:
            found.setdefault((r["school_id"], r["room_id"]), []).append(_lesson(r))
        return found

    def save_lessons(self, lessons: Sequence[Lesson], now: float) -> ImportCounts:
        added = updated = unchanged = locked = 0
        with self._db.write_lock:
            try:
                self._db.writer.execute("BEGIN IMMEDIATE")
                for lesson in lessons:
                    row = self._db.writer.execute(
                        f"SELECT {_LESSON_COLUMNS}, state FROM lessons WHERE lesson_id = ?",
                        (lesson.lesson_id,),
                    ).fetchone()
                    if row is None:
                        self._db.writer.execute(
                            f"INSERT INTO lessons (lesson_id, {_LESSON_COLUMNS}, updated_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (lesson.lesson_id, *_values(lesson), now),
                        )
                        added += 1
                    elif _lesson(row) == lesson:
                        unchanged += 1
                    elif row["state"] != LessonState.SCHEDULED:
                        locked += 1
                    else:
                        self._db.writer.execute(
                            "UPDATE lessons SET school_id = ?, room_id = ?, starts_at = ?, "
                            "ends_at = ?, class_name = ?, subject = ?, teacher = ?, "
                            "content_url = ?, remote = ?, manual = ?, updated_at = ? "
                            "WHERE lesson_id = ?",
                            (*_values(lesson), now, lesson.lesson_id),
                        )
                        updated += 1
                self._db.writer.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.writer.in_transaction:
                    self._db.writer.execute("ROLLBACK")
                raise StoreError(f"database {self._db.path}: {exc}") from None
        return ImportCounts(added, updated, unchanged, locked)

    def due_lessons(self, until: float, now: float) -> list[Lesson]:
        rows = self._db.read(
            f"SELECT {_LESSON_COLUMNS} FROM lessons WHERE state = 'scheduled' "
            "AND starts_at <= :until AND ends_at > :now ORDER BY starts_at",
            {"until": until, "now": now},
        )
        return [_lesson(r) for r in rows]

    def missed_lessons(self, now: float) -> list[Lesson]:
        rows = self._db.read(
            f"SELECT {_LESSON_COLUMNS} FROM lessons WHERE state = 'scheduled' "
            "AND ends_at <= :now ORDER BY starts_at",
            {"now": now},
        )
        return [_lesson(r) for r in rows]

    def panels_in_rooms(self, rooms: Iterable[Room]) -> dict[Room, list[str]]:
        rows = self._db.read(
            "SELECT device_id, devices.school_id, room_id FROM devices "
            "LEFT JOIN enrollments USING (device_id) "
            "WHERE devices.school_id || char(31) || room_id "
            "IN (SELECT value FROM json_each(:rooms)) "
            "AND kind = 'panel' AND revoked_at IS NULL ORDER BY device_id",
            {"rooms": _rooms_json(rooms)},
        )
        found: dict[Room, list[str]] = {}
        for r in rows:
            found.setdefault((r["school_id"], r["room_id"]), []).append(r["device_id"])
        return found

    def dispatch(
        self, lessons: Sequence[tuple[str, Sequence[OutboxCommand]]], now: float
    ) -> list[str]:
        done: list[str] = []
        with self._db.write_lock:
            try:
                self._db.writer.execute("BEGIN IMMEDIATE")
                for lesson_id, commands in lessons:
                    state = LessonState.DISPATCHED if commands else LessonState.NO_DEVICE
                    reason = "" if commands else "no panel in the room"
                    moved = self._db.writer.execute(
                        "UPDATE lessons SET state = ?, dispatched_at = ?, reason = ?, "
                        "updated_at = ? WHERE lesson_id = ? AND state = 'scheduled'",
                        (state.value, now, reason, now, lesson_id),
                    ).rowcount
                    if not moved:
                        continue
                    self._db.writer.executemany(
                        "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?, ?, NULL)",
                        [
                            (c.command_id, c.device_id, c.lesson_id, c.command, now, c.expires_at)
                            for c in commands
                        ],
                    )
                    self._db.writer.executemany(
                        "INSERT OR IGNORE INTO lesson_panels (lesson_id, device_id, command_id) "
                        "VALUES (?, ?, ?)",
                        [(c.lesson_id, c.device_id, c.command_id) for c in commands],
                    )
                    done.append(lesson_id)
                self._db.writer.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.writer.in_transaction:
                    self._db.writer.execute("ROLLBACK")
                raise StoreError(f"database {self._db.path}: {exc}") from None
        return done

    def next_wake(self, lead: float, settle: float) -> float | None:
        row = self._db.read(
            """
            SELECT min(t) AS due FROM (
                SELECT min(starts_at) - :lead AS t FROM lessons WHERE state = 'scheduled'
                UNION ALL
                SELECT min(ends_at) FROM lessons WHERE state = 'dispatched' AND ended_at IS NULL
                UNION ALL
                SELECT min(ends_at) + :settle FROM lessons
                WHERE state = 'dispatched' AND ended_at IS NOT NULL
            )
            """,
            {"lead": lead, "settle": settle},
        )
        due = row[0]["due"] if row else None
        return float(due) if due is not None else None

    def pending_commands(self, device_id: str, now: float) -> list[bytes]:
        rows = self._db.read(
            "SELECT command FROM outbox WHERE device_id = :device AND done_at IS NULL "
            "AND expires_at > :now ORDER BY created_at, command_id",
            {"device": device_id, "now": now},
        )
        return [bytes(r["command"]) for r in rows]

    def lessons_ending(self, now: float) -> list[tuple[Lesson, list[str]]]:
        rows = self._db.read(
            f"SELECT lesson_id, {_LESSON_COLUMNS} FROM lessons WHERE state = 'dispatched' "
            "AND ends_at <= :now AND ended_at IS NULL ORDER BY ends_at",
            {"now": now},
        )
        ending = []
        for r in rows:
            panels = self._db.read(
                "SELECT device_id FROM lesson_panels WHERE lesson_id = :id ORDER BY device_id",
                {"id": r["lesson_id"]},
            )
            ending.append((_lesson(r), [p["device_id"] for p in panels]))
        if ending:
            self._db.write_many(
                "UPDATE lessons SET ended_at = ? WHERE lesson_id = ?",
                [(now, lesson.lesson_id) for lesson, _ in ending],
            )
        return ending

    def lessons_to_settle(self, before: float) -> list[tuple[Lesson, list[PanelResult]]]:
        rows = self._db.read(
            f"SELECT lesson_id, {_LESSON_COLUMNS} FROM lessons WHERE state = 'dispatched' "
            "AND ends_at <= :before ORDER BY ends_at",
            {"before": before},
        )
        settled = []
        for r in rows:
            panels = self._db.read(
                "SELECT device_id, launched_at, failed_reason FROM lesson_panels "
                "WHERE lesson_id = :id ORDER BY device_id",
                {"id": r["lesson_id"]},
            )
            results = [
                PanelResult(p["device_id"], p["launched_at"], p["failed_reason"]) for p in panels
            ]
            settled.append((_lesson(r), results))
        return settled

    def settle(self, lesson_id: str, state: LessonState, reason: str, now: float) -> None:
        self._db.write(
            "UPDATE lessons SET state = ?, reason = ?, updated_at = ? WHERE lesson_id = ?",
            (state.value, reason, now, lesson_id),
        )

    def list_lessons(self, query: LessonQuery) -> list[LessonRecord]:
        q = query
        where = ["starts_at >= :since", "starts_at < :until"]
        params: dict[str, object] = {"since": q.since, "until": q.until, "limit": q.limit}
        if q.school_id is not None:
            where.append("l.school_id = :school")
            params["school"] = q.school_id
        if q.room_id is not None:
            where.append("l.room_id = :room")
            params["room"] = q.room_id
        if q.schools is not None:
            where.append("l.school_id IN (SELECT value FROM json_each(:schools))")
            params["schools"] = json.dumps(sorted(q.schools))
        rows = self._db.read(
            f"""
            SELECT l.*, count(p.device_id) AS panels, count(p.launched_at) AS launched,
                   count(p.failed_reason) AS failed
            FROM lessons l LEFT JOIN lesson_panels p USING (lesson_id)
            WHERE {" AND ".join(where)}
            GROUP BY l.lesson_id ORDER BY l.starts_at, l.school_id, l.room_id LIMIT :limit
            """,
            params,
        )
        return [
            LessonRecord(
                lesson=_lesson(r),
                state=LessonState(r["state"]),
                reason=r["reason"],
                dispatched_at=r["dispatched_at"],
                panels=r["panels"],
                launched=r["launched"],
                failed=r["failed"],
            )
            for r in rows
        ]

    def record_event_in_batch(self, tx: Tx, r: LessonEventRow) -> StoredLessonEvent | None:
        """Inside the devices' record_messages transaction ``tx``: stores a new
        event and what it means for the lesson's panel; None for a replayed one."""
        e = r.event
        if not tx.execute(_EVENT_SEQ_SQL, (r.device_id, r.seq)).rowcount:
            return None
        tx.execute(
            "INSERT INTO lesson_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        panel = (e.lesson_id, r.device_id)
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
        # The outbox keeps offering the launch until the lesson ends, answered or not:
        # a panel that restarts mid-lesson shows it again, and one that did not
        # restart recognises the command id and does nothing.
        lesson = tx.execute(
            "SELECT school_id, starts_at FROM lessons WHERE lesson_id = ?", (e.lesson_id,)
        ).fetchone()
        if lesson is None:
            return None
        return StoredLessonEvent(e, lesson["school_id"], lesson["starts_at"])
