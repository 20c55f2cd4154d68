"""The lesson schedule, its outbox and the panels' answers, on either database.

Several controllers may share one PostgreSQL database, each running the dispatcher.
What one claims, the others must see claimed: a lesson is dispatched, ended and
settled by one transaction that locks its row first and checks its state again, so
each panel's launch goes into the outbox once. The lessons' rows are always locked in
the order of their ids' code points (imports and dispatch alike), so two transactions
over the same lessons wait for each other instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from controller.lessons.sql_events import record_event
from controller.lessons.sql_import import save_schedule
from controller.lessons.sql_rows import LESSON_COLUMNS, lesson_of
from controller.lessons.store import ImportCounts, LessonQuery, OutboxCommand, PanelResult, Room
from controller.lessons.stored_values import checked_room, storable_id
from controller.store.rows import LessonEventRow, StoredLessonEvent
from controller.store.sql import Params, Row, SqlDatabase, Tx
from inventory.lessons import Lesson, LessonRecord, LessonState


def _storable_rooms(rooms: Iterable[Room]) -> set[Room]:
    # A room no store could hold matches nothing; PostgreSQL would refuse a NUL in it.
    return {(s, r) for s, r in rooms if storable_id(s) and storable_id(r)}


class SqlLessons:
    """A LessonStore on the shared database, safe for several controllers on it."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        self._one_of = db.dialect.one_of
        self._listed = db.dialect.listed
        self._by_code_point = db.dialect.by_code_point

    def _in_rooms(self, rooms: set[Room], prefix: str = "") -> tuple[str, dict[str, object]]:
        """The condition that a row's school and room are among ``rooms``' schools and
        rooms, and its values; the caller keeps only the pairs it asked for. (Two
        lists, not one of joined pairs: the indexes by school and room serve them.)"""
        condition = (
            f"{self._one_of(f'{prefix}school_id', ':schools')} "
            f"AND {self._one_of('room_id', ':rooms')}"
        )
        values = {
            "schools": self._listed(sorted({s for s, _ in rooms})),
            "rooms": self._listed(sorted({r for _, r in rooms})),
        }
        return condition, values

    def known_rooms(self, rooms: Iterable[Room]) -> set[Room]:
        wanted = _storable_rooms(rooms)
        if not wanted:
            return set()
        condition, values = self._in_rooms(wanted)
        rows = self._db.read(f"SELECT school_id, room_id FROM rooms WHERE {condition}", values)
        return {(r["school_id"], r["room_id"]) for r in rows} & wanted

    def add_room(self, school_id: str, room_id: str) -> None:
        checked_room(school_id, room_id)
        self._db.write(
            "INSERT INTO rooms (school_id, room_id) VALUES (?, ?) "
            "ON CONFLICT (school_id, room_id) DO NOTHING",
            (school_id, room_id),
        )

    def lessons_in_rooms(
        self, rooms: Iterable[Room], since: float, until: float
    ) -> dict[Room, list[Lesson]]:
        wanted = _storable_rooms(rooms)
        if not wanted:
            return {}
        condition, values = self._in_rooms(wanted)
        rows = self._db.read(
            f"SELECT {LESSON_COLUMNS} FROM lessons WHERE {condition} "
            "AND starts_at < :until AND ends_at > :since "
            f"ORDER BY starts_at, {self._by_code_point('lesson_id')}",
            {**values, "since": since, "until": until},
        )
        found: dict[Room, list[Lesson]] = {}
        for r in rows:
            room = (r["school_id"], r["room_id"])
            if room in wanted:
                found.setdefault(room, []).append(lesson_of(r))
        return found

    def save_lessons(self, lessons: Sequence[Lesson], now: float) -> ImportCounts:
        return save_schedule(self._db, lessons, now)

    def due_lessons(self, until: float, now: float) -> list[Lesson]:
        rows = self._db.read(
            f"SELECT {LESSON_COLUMNS} FROM lessons WHERE state = 'scheduled' "
            "AND starts_at <= :until AND ends_at > :now "
            f"ORDER BY starts_at, {self._by_code_point('lesson_id')}",
            {"until": until, "now": now},
        )
        return [lesson_of(r) for r in rows]

    def missed_lessons(self, now: float) -> list[Lesson]:
        rows = self._db.read(
            f"SELECT {LESSON_COLUMNS} FROM lessons WHERE state = 'scheduled' "
            f"AND ends_at <= :now ORDER BY starts_at, {self._by_code_point('lesson_id')}",
            {"now": now},
        )
        return [lesson_of(r) for r in rows]

    def panels_in_rooms(self, rooms: Iterable[Room]) -> dict[Room, list[str]]:
        wanted = _storable_rooms(rooms)
        if not wanted:
            return {}
        condition, values = self._in_rooms(wanted, prefix="devices.")
        rows = self._db.read(
            "SELECT device_id, devices.school_id AS school_id, room_id FROM devices "
            "LEFT JOIN enrollments USING (device_id) "
            f"WHERE {condition} AND kind = 'panel' AND revoked_at IS NULL "
            f"ORDER BY {self._by_code_point('device_id')}",
            values,
        )
        found: dict[Room, list[str]] = {}
        for r in rows:
            room = (r["school_id"], r["room_id"])
            if room in wanted:
                found.setdefault(room, []).append(r["device_id"])
        return found

    def dispatch(
        self, lessons: Sequence[tuple[str, Sequence[OutboxCommand]]], now: float
    ) -> list[str]:
        # A lesson given twice is dispatched with the commands given first.
        plans: dict[str, Sequence[OutboxCommand]] = {}
        for lesson_id, commands in lessons:
            plans.setdefault(lesson_id, commands)
        if not plans:
            return []
        with self._db.transaction() as tx:
            # The claim: PostgreSQL waits for a row another controller holds and then
            # returns it as that one left it, so a lesson it dispatched is not scheduled
            # here. (The state is tested here, not in SQL: SQLite, without statistics,
            # would look the rows up by the state's index, every scheduled lesson.)
            rows = tx.execute(
                f"SELECT lesson_id, state FROM lessons WHERE {self._one_of('lesson_id', ':ids')} "
                f"ORDER BY {self._by_code_point('lesson_id')}{self._db.dialect.for_update}",
                {"ids": self._listed(sorted(plans))},
            ).fetchall()
            claimed = {r["lesson_id"] for r in rows if r["state"] == LessonState.SCHEDULED}
            with_panels = sorted(i for i in claimed if plans[i])
            self._mark_dispatched(tx, with_panels, LessonState.DISPATCHED, "", now)
            without = sorted(i for i in claimed if not plans[i])
            self._mark_dispatched(tx, without, LessonState.NO_DEVICE, "no panel in the room", now)
            commands = [c for i in with_panels for c in plans[i]]
            if commands:
                tx.executemany(
                    "INSERT INTO outbox (command_id, device_id, lesson_id, command, "
                    "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (command_id) DO NOTHING",
                    [
                        (c.command_id, c.device_id, c.lesson_id, c.command, now, c.expires_at)
                        for c in commands
                    ],
                )
                tx.executemany(
                    "INSERT INTO lesson_panels (lesson_id, device_id, command_id) "
                    "VALUES (?, ?, ?) ON CONFLICT (lesson_id, device_id) DO NOTHING",
                    [(c.lesson_id, c.device_id, c.command_id) for c in commands],
                )
        return [i for i in plans if i in claimed]

    def _mark_dispatched(
        self, tx: Tx, ids: Sequence[str], state: LessonState, reason: str, now: float
    ) -> None:
        # Only lessons this transaction claimed: their rows are its until it ends.
        if ids:
            tx.execute(
                "UPDATE lessons SET state = :state, dispatched_at = :now, reason = :reason, "
                f"updated_at = :now WHERE {self._one_of('lesson_id', ':ids')}",
                {"state": state.value, "now": now, "reason": reason, "ids": self._listed(ids)},
            )

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
            ) AS due_times
            """,
            {"lead": lead, "settle": settle},
        )
        due = row[0]["due"] if row else None
        return float(due) if due is not None else None

    def pending_commands(self, device_id: str, now: float) -> list[bytes]:
        if not storable_id(device_id):
            return []
        rows = self._db.read(
            "SELECT command FROM outbox WHERE device_id = :device AND done_at IS NULL "
            f"AND expires_at > :now ORDER BY created_at, {self._by_code_point('command_id')}",
            {"device": device_id, "now": now},
        )
        return [bytes(r["command"]) for r in rows]

    def pending_commands_of(
        self, device_ids: Collection[str], now: float
    ) -> dict[str, list[bytes]]:
        ids = [d for d in device_ids if storable_id(d)]
        if not ids:
            return {}
        rows = self._db.read(
            "SELECT device_id, command FROM outbox WHERE done_at IS NULL "
            f"AND expires_at > :now AND {self._one_of('device_id', ':ids')} "
            f"ORDER BY created_at, {self._by_code_point('command_id')}",
            {"ids": self._listed(ids), "now": now},
        )
        found: dict[str, list[bytes]] = {}
        for r in rows:
            found.setdefault(r["device_id"], []).append(bytes(r["command"]))
        return found

    def _panels_of(
        self, read: Callable[[str, Params], Sequence[Row]], ids: Sequence[str], columns: str
    ) -> dict[str, list[Row]]:
        """Each lesson's panels, by device id, through ``read`` (a statement's rows)."""
        rows = read(
            f"SELECT lesson_id, {columns} FROM lesson_panels "
            f"WHERE {self._one_of('lesson_id', ':ids')} "
            f"ORDER BY {self._by_code_point('device_id')}",
            {"ids": self._listed(ids)},
        )
        found: dict[str, list[Row]] = {i: [] for i in ids}
        for r in rows:
            found[r["lesson_id"]].append(r)
        return found

    def lessons_ending(self, now: float) -> list[tuple[Lesson, list[str]]]:
        ending = "state = 'dispatched' AND ends_at <= :now AND ended_at IS NULL"
        # Asked every pass: a read first, so that a pass with nothing to end does not
        # take SQLite's write lock from the devices' batches.
        if not self._db.read(f"SELECT 1 AS due FROM lessons WHERE {ending} LIMIT 1", {"now": now}):
            return []
        with self._db.transaction() as tx:
            # Claimed as dispatch is: one controller ends each lesson.
            rows = tx.execute(
                f"SELECT lesson_id, {LESSON_COLUMNS} FROM lessons WHERE {ending} "
                f"ORDER BY {self._by_code_point('lesson_id')}{self._db.dialect.for_update}",
                {"now": now},
            ).fetchall()
            if not rows:
                return []
            ids = [r["lesson_id"] for r in rows]
            tx.execute(
                f"UPDATE lessons SET ended_at = :now WHERE {self._one_of('lesson_id', ':ids')}",
                {"now": now, "ids": self._listed(ids)},
            )
            panels = self._panels_of(
                lambda sql, params: tx.execute(sql, params).fetchall(), ids, "device_id"
            )
        by_end = sorted(rows, key=lambda r: (r["ends_at"], r["lesson_id"]))
        return [(lesson_of(r), [p["device_id"] for p in panels[r["lesson_id"]]]) for r in by_end]

    def lessons_to_settle(self, before: float) -> list[tuple[Lesson, list[PanelResult]]]:
        rows = self._db.read(
            f"SELECT lesson_id, {LESSON_COLUMNS} FROM lessons WHERE state = 'dispatched' "
            f"AND ends_at <= :before ORDER BY ends_at, {self._by_code_point('lesson_id')}",
            {"before": before},
        )
        if not rows:
            return []
        panels = self._panels_of(
            self._db.read,
            [r["lesson_id"] for r in rows],
            "device_id, launched_at, failed_reason",
        )
        return [
            (
                lesson_of(r),
                [
                    PanelResult(p["device_id"], p["launched_at"], p["failed_reason"])
                    for p in panels[r["lesson_id"]]
                ],
            )
            for r in rows
        ]

    def settle(self, lesson_id: str, state: LessonState, reason: str, now: float) -> None:
        # An outcome is fixed once recorded: a second controller settling the same
        # lesson from its own (older) reading changes nothing.
        self._db.write(
            "UPDATE lessons SET state = ?, reason = ?, updated_at = ? "
            "WHERE lesson_id = ? AND state IN ('scheduled', 'dispatched')",
            (state.value, reason, now, lesson_id),
        )

    def list_lessons(self, query: LessonQuery) -> list[LessonRecord]:
        q = query
        where = ["starts_at >= :since", "starts_at < :until"]
        # SQLite reads LIMIT -1 as no limit, PostgreSQL refuses it: none on both.
        params: dict[str, object] = {"since": q.since, "until": q.until, "limit": max(q.limit, 0)}
        for column, value, mark in (
            ("school_id", q.school_id, "school"),
            ("room_id", q.room_id, "room"),
        ):
            if value is None:
                continue
            if not storable_id(value):
                return []
            where.append(f"l.{column} = :{mark}")
            params[mark] = value
        if q.schools is not None:
            where.append(self._one_of("l.school_id", ":schools"))
            params["schools"] = self._listed(sorted(s for s in q.schools if storable_id(s)))
        order = ", ".join(
            self._by_code_point(c) for c in ("l.school_id", "l.room_id", "l.lesson_id")
        )
        rows = self._db.read(
            f"""
            SELECT l.*, count(p.device_id) AS panels, count(p.launched_at) AS launched,
                   count(p.failed_reason) AS failed
            FROM lessons l LEFT JOIN lesson_panels p USING (lesson_id)
            WHERE {" AND ".join(where)}
            GROUP BY l.lesson_id ORDER BY l.starts_at, {order} LIMIT :limit
            """,
            params,
        )
        return [
            LessonRecord(
                lesson=lesson_of(r),
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
        return record_event(tx, r)
