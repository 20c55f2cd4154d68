"""Rollouts, their hosts, waves and claims, and schools' maintenance windows in the
SQLite store.

Lists of ids (20,000 hosts in a city-wide rollout) are bound as one JSON array and
read with ``json_each``: one parameter, so SQLite's variable limit never applies and
nothing needs chunking.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from controller.errors import HostsClaimed, StoreError
from controller.rollouts.store import NewHost, RolloutQuery, Room
from controller.store.sql import SqlDatabase
from inventory.host_output import bounded_detail, printable, tail
from inventory.rollouts import (
    Amount,
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    WaveRecord,
    parse_amount,
)
from inventory.schedule import MAX_LESSON_SECONDS

_FINAL = tuple(s.value for s in RolloutState if s.final)
_IDS = "(SELECT value FROM json_each(?))"
# A host's row without its detail, which only rollout_host reads.
_HOST_COLUMNS = (
    "rollout_id, device_id, school_id, wave, outcome, task, message, started_at, "
    "finished_at, rc, stdout, stderr"
)


def _ids(values: Iterable[str]) -> str:
    return json.dumps(sorted(set(values)))


def _amount_text(amount: Amount) -> str:
    text = str(amount)
    # str() keeps six significant digits; a percentage with more is stored whole.
    if amount.percent and float(text.removesuffix("%")) != amount.value:
        return f"{amount.value!r}%"
    return text


def _spec_json(spec: RolloutSpec) -> str:
    try:
        return json.dumps(
            {
                "canary": _amount_text(spec.canary),
                "wave_size": _amount_text(spec.wave_size),
                "max_fail": spec.max_fail,
                "extra_vars": dict(spec.extra_vars),
                "gate_lessons": spec.gate_lessons,
                "include_offline": spec.include_offline,
                "offline_skipped": list(spec.offline_skipped),
                "strategy": spec.strategy,
            },
            sort_keys=True,
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(f"rollout extra vars cannot be stored as JSON: {exc}") from None


def _spec(row: sqlite3.Row) -> RolloutSpec:
    data = json.loads(row["spec"])
    return RolloutSpec(
        playbook=row["playbook"],
        selector=row["selector"],
        canary=parse_amount(data["canary"], "canary"),
        wave_size=parse_amount(data["wave_size"], "wave size"),
        max_fail=float(data["max_fail"]),
        extra_vars=data["extra_vars"],
        gate_lessons=bool(data["gate_lessons"]),
        # Absent from rollouts stored before offline devices were left out.
        include_offline=bool(data.get("include_offline", True)),
        offline_skipped=tuple(data.get("offline_skipped", ())),
        # Absent from rollouts stored before a rollout could choose: linear then.
        strategy=str(data.get("strategy", "linear")),
    )


def _host(r: sqlite3.Row) -> HostResult:
    return HostResult(
        device_id=r["device_id"],
        school_id=r["school_id"],
        wave=r["wave"],
        outcome=HostOutcome(r["outcome"]),
        task=r["task"],
        message=r["message"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        rc=r["rc"],
        stdout=r["stdout"],
        stderr=r["stderr"],
        # A sqlite3.Row's `in` looks at its values, not its column names.
        detail=r["detail"] if "detail" in r.keys() else "",  # noqa: SIM118
    )


def _stored(r: HostResult) -> tuple[str, str, int | None, str, str, str]:
    """A result as it is stored: task, message, return code, output ends and detail,
    bounded and escaped again, since they come from the wave's worker, which runs as
    Ansible's user with the devices' output."""
    return (
        printable(r.task[:500]),
        printable(r.message[:1000]),
        r.rc,
        tail(r.stdout),
        tail(r.stderr),
        bounded_detail(r.detail),
    )


def _records(conn: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[RolloutRecord]:
    """Rollout rows with their counts and waves: three queries however many rows."""
    ids = json.dumps([r["rollout_id"] for r in rows])
    counts = {r["rollout_id"]: dict.fromkeys(HostOutcome, 0) for r in rows}
    for c in conn.execute(
        "SELECT rollout_id, outcome, count(*) AS n FROM rollout_hosts "
        f"WHERE rollout_id IN {_IDS} GROUP BY rollout_id, outcome",
        (ids,),
    ):
        counts[c["rollout_id"]][HostOutcome(c["outcome"])] = c["n"]
    waves: dict[int, list[WaveRecord]] = {r["rollout_id"]: [] for r in rows}
    for w in conn.execute(
        f"SELECT * FROM rollout_waves WHERE rollout_id IN {_IDS} ORDER BY rollout_id, wave",
        (ids,),
    ):
        waves[w["rollout_id"]].append(
            WaveRecord(w["wave"], w["hosts"], w["started_at"], w["finished_at"], w["failed"])
        )
    return [
        RolloutRecord(
            rollout_id=r["rollout_id"],
            spec=_spec(r),
            state=RolloutState(r["state"]),
            reason=r["reason"],
            created_by=r["created_by"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            finished_at=r["finished_at"],
            counts=counts[r["rollout_id"]],
            waves=tuple(waves[r["rollout_id"]]),
            baseline=LessonRates(r["baseline_tried"], r["baseline_failed"]),
            waiting=r["waiting"],
        )
        for r in rows
    ]


class SqlRollouts:
    """A RolloutStore on the shared SQLite file."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """This thread's reader in one read transaction, so a record's state, counts
        and waves are of the same moment."""
        conn = self._db.reader()
        try:
            conn.execute("BEGIN")
            yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"database {self._db.path}: {exc}") from None
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def create_rollout(
        self,
        spec: RolloutSpec,
        hosts: Sequence[NewHost],
        created_by: str,
        now: float,
        baseline: LessonRates,
    ) -> int:
        spec_json = _spec_json(spec)
        with self._db.transaction() as db:
            held = db.execute(
                "SELECT c.device_id, c.rollout_id FROM json_each(?) AS j "
                "JOIN rollout_claims AS c ON c.device_id = j.value",
                (_ids(h.device_id for h in hosts),),
            ).fetchall()
            if held:
                raise HostsClaimed({r["device_id"]: r["rollout_id"] for r in held})
            rollout_id = int(
                db.execute(
                    "INSERT INTO rollouts (playbook, selector, spec, state, created_by, "
                    "created_at, updated_at, baseline_tried, baseline_failed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING rollout_id",
                    (
                        spec.playbook,
                        spec.selector,
                        spec_json,
                        RolloutState.RUNNING.value,
                        created_by,
                        now,
                        now,
                        baseline.tried,
                        baseline.failed,
                    ),
                ).fetchone()[0]
            )
            db.executemany(
                "INSERT INTO rollout_hosts (rollout_id, device_id, school_id) VALUES (?, ?, ?)",
                [(rollout_id, h.device_id, h.school_id) for h in hosts],
            )
            db.executemany(
                "INSERT INTO rollout_claims VALUES (?, ?)",
                [(h.device_id, rollout_id) for h in hosts],
            )
        return rollout_id

    def get_rollout(self, rollout_id: int) -> RolloutRecord | None:
        with self._snapshot() as db:
            rows = db.execute("SELECT * FROM rollouts WHERE rollout_id = ?", (rollout_id,))
            found = _records(db, rows.fetchall())
        return found[0] if found else None

    def list_rollouts(self, query: RolloutQuery) -> list[RolloutRecord]:
        where = ["1"]
        params: list[object] = []
        if query.states is not None:
            where.append(f"state IN {_IDS}")
            params.append(_ids(s.value for s in query.states))
        if query.schools is not None:
            # Like GetRollout: a rollout is seen only by who may see every school it touches.
            where.append(
                "NOT EXISTS (SELECT 1 FROM rollout_hosts AS h WHERE h.rollout_id = r.rollout_id "
                f"AND h.school_id NOT IN {_IDS})"
            )
            params.append(_ids(query.schools))
        with self._snapshot() as db:
            rows = db.execute(
                f"SELECT * FROM rollouts AS r WHERE {' AND '.join(where)} "
                "ORDER BY created_at DESC, rollout_id DESC LIMIT ?",
                (*params, query.limit),
            ).fetchall()
            return _records(db, rows)

    def rollout_schools(self, rollout_id: int) -> set[str]:
        rows = self._db.read(
            "SELECT DISTINCT school_id FROM rollout_hosts WHERE rollout_id = :id",
            {"id": rollout_id},
        )
        return {r["school_id"] for r in rows}

    def rollout_hosts(
        self, rollout_id: int, outcomes: frozenset[HostOutcome] | None = None
    ) -> list[HostResult]:
        only = "" if outcomes is None else "AND outcome IN (SELECT value FROM json_each(:outs))"
        rows = self._db.read(
            f"SELECT {_HOST_COLUMNS} FROM rollout_hosts WHERE rollout_id = :id {only} "
            "ORDER BY wave IS NULL, wave, device_id",
            {"id": rollout_id, "outs": _ids(o.value for o in outcomes or ())},
        )
        return [_host(r) for r in rows]

    def rollout_host(self, rollout_id: int, device_id: str) -> HostResult | None:
        rows = self._db.read(
            "SELECT * FROM rollout_hosts WHERE rollout_id = :id AND device_id = :device",
            {"id": rollout_id, "device": device_id},
        )
        return _host(rows[0]) if rows else None

    def set_rollout_state(
        self, rollout_id: int, state: RolloutState, reason: str, now: float
    ) -> RolloutRecord | None:
        with self._db.transaction() as db:
            # A final rollout has given its claims back: it stays as it ended, and the
            # record returned says so.
            moved = db.execute(
                "UPDATE rollouts SET state = ?, reason = ?, updated_at = ?, "
                f"finished_at = ? WHERE rollout_id = ? AND state NOT IN {_IDS}",
                (
                    state.value,
                    reason,
                    now,
                    now if state.final else None,
                    rollout_id,
                    json.dumps(_FINAL),
                ),
            ).rowcount
            if moved and state.final:
                # A running host's playbook was stopped (it may be half changed); a
                # pending one was never touched. finish_wave may still say better.
                db.execute(
                    "UPDATE rollout_hosts SET finished_at = ?, outcome = CASE outcome "
                    "WHEN 'running' THEN 'interrupted' ELSE 'cancelled' END "
                    "WHERE rollout_id = ? AND outcome IN ('pending', 'running')",
                    (now, rollout_id),
                )
                db.execute(
                    "UPDATE rollout_waves SET finished_at = ? "
                    "WHERE rollout_id = ? AND finished_at IS NULL",
                    (now, rollout_id),
                )
                db.execute("DELETE FROM rollout_claims WHERE rollout_id = ?", (rollout_id,))
        return self.get_rollout(rollout_id)

    def set_waiting(self, rollout_id: int, waiting: str, now: float) -> None:
        # Called on every pass of the engine: only a change is written.
        self._db.write(
            "UPDATE rollouts SET waiting = ?, updated_at = ? WHERE rollout_id = ? AND waiting != ?",
            (waiting, now, rollout_id, waiting),
        )

    def start_wave(self, rollout_id: int, wave: int, device_ids: Sequence[str], now: float) -> None:
        with self._db.transaction() as db:
            moved = db.executemany(
                "UPDATE rollout_hosts SET wave = ?, outcome = 'running', started_at = ? "
                "WHERE rollout_id = ? AND device_id = ? AND outcome = 'pending'",
                [(wave, now, rollout_id, d) for d in device_ids],
            ).rowcount
            db.execute(
                "INSERT INTO rollout_waves (rollout_id, wave, hosts, started_at) "
                "VALUES (?, ?, ?, ?)",
                (rollout_id, wave, moved, now),
            )

    def finish_wave(
        self, rollout_id: int, wave: int, results: Sequence[HostResult], now: float
    ) -> None:
        with self._db.transaction() as db:
            # Any host of the wave, even one an abort has cancelled since: what the
            # playbook did to it is what it did.
            db.executemany(
                "UPDATE rollout_hosts SET outcome = ?, task = ?, message = ?, rc = ?, "
                "stdout = ?, stderr = ?, detail = ?, finished_at = ? "
                "WHERE rollout_id = ? AND device_id = ? AND wave = ?",
                [
                    (
                        r.outcome.value,
                        *_stored(r),
                        now if r.finished_at is None else r.finished_at,
                        rollout_id,
                        r.device_id,
                        wave,
                    )
                    for r in results
                ],
            )
            db.execute(
                "UPDATE rollout_waves SET finished_at = ?3, failed = (SELECT count(*) "
                "FROM rollout_hosts WHERE rollout_id = ?1 AND wave = ?2 "
                "AND outcome IN ('failed', 'unreachable')) WHERE rollout_id = ?1 AND wave = ?2",
                (rollout_id, wave, now),
            )

    def requeue_interrupted(self, rollout_id: int) -> int:
        with self._db.transaction() as db:
            moved = db.execute(
                "UPDATE rollout_hosts SET wave = NULL, outcome = 'pending', started_at = NULL, "
                "finished_at = NULL, task = '', message = '', rc = NULL, stdout = '', "
                "stderr = '', detail = '' "
                "WHERE rollout_id = ?1 AND outcome = 'running' AND wave IN (SELECT wave "
                "FROM rollout_waves WHERE rollout_id = ?1 AND finished_at IS NULL)",
                (rollout_id,),
            ).rowcount
            db.execute(
                "DELETE FROM rollout_waves WHERE rollout_id = ? AND finished_at IS NULL",
                (rollout_id,),
            )
        return moved

    def set_windows(self, school_id: str, windows: Sequence[str]) -> None:
        with self._db.transaction() as db:
            db.execute("DELETE FROM maintenance_windows WHERE school_id = ?", (school_id,))
            db.executemany(
                "INSERT OR IGNORE INTO maintenance_windows VALUES (?, ?)",
                [(school_id, w) for w in windows],
            )

    def windows(self, school_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
        only = "" if school_ids is None else "WHERE school_id IN (SELECT value FROM json_each(:s))"
        # By rowid: in the order they were given, which is how a person wrote them.
        rows = self._db.read(
            f"SELECT school_id, window FROM maintenance_windows {only} ORDER BY school_id, rowid",
            {"s": _ids(school_ids or ())},
        )
        found: dict[str, list[str]] = {}
        for r in rows:
            found.setdefault(r["school_id"], []).append(r["window"])
        return found

    def busy_rooms(self, rooms: Iterable[Room], since: float, until: float) -> dict[Room, float]:
        # A lesson is at most MAX_LESSON_SECONDS long (parse_row refuses longer ones,
        # and a lesson launched by hand is a parsed row too): only lessons starting
        # that long before ``since`` can overlap, so the index on (school, room,
        # start) reads a day of each room, not its year.
        rows = self._db.read(
            "SELECT l.school_id, l.room_id, max(l.ends_at) AS free_at "
            "FROM json_each(:rooms) AS j JOIN lessons AS l "
            "ON l.school_id = json_extract(j.value, '$[0]') "
            "AND l.room_id = json_extract(j.value, '$[1]') "
            "AND l.starts_at >= :since - :longest AND l.starts_at < :until "
            "WHERE l.ends_at > :since GROUP BY l.school_id, l.room_id",
            {
                "rooms": json.dumps(sorted({(s, r) for s, r in rooms})),
                "since": since,
                "until": until,
                "longest": MAX_LESSON_SECONDS,
            },
        )
        return {(r["school_id"], r["room_id"]): r["free_at"] for r in rows}

    def lesson_rates(self, device_ids: Iterable[str], since: float, until: float) -> LessonRates:
        rows = self._db.read(
            "SELECT count(*) AS tried, "
            "coalesce(sum(p.failed_reason IS NOT NULL OR p.launched_at IS NULL), 0) AS failed "
            "FROM lessons AS l JOIN lesson_panels AS p ON p.lesson_id = l.lesson_id "
            "WHERE l.starts_at >= :since AND l.starts_at < :until "
            "AND p.device_id IN (SELECT value FROM json_each(:ids))",
            {"ids": _ids(device_ids), "since": since, "until": until},
        )
        return LessonRates(rows[0]["tried"], rows[0]["failed"])
