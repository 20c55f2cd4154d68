"""Rollouts, their hosts, waves and claims, and schools' maintenance windows, on either
database (controller/store/sql.py).

Several controllers may share one PostgreSQL database, whose transactions run at once
where SQLite's one writer ran them one after another. So each step that reads and
then writes holds what it read: a host's claim is an insert a second rollout cannot
also make, a wave is opened by inserting its row and closed with that row locked (its
failed count taken after every other closing of it), a rollout ends by an update that
only a rollout not yet ended matches, and a school's windows are replaced under a key
only one transaction at a time can insert. Transactions take a rollout's rows in one
order (the rollout, its waves, its hosts, their claims), so that no two of them each
wait for the other.

Lists of ids (20,000 hosts in a city-wide rollout) are bound as one parameter (the
dialect's list), so no variable limit applies and nothing needs chunking.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from controller.errors import HostsClaimed, StoreError
from controller.rollouts.slices import SLICE_HOSTS, cut
from controller.rollouts.sql_rows import (
    HOST_COLUMNS,
    host,
    records,
    records_select,
    spec_json,
    stored_result,
)
from controller.rollouts.store import NewHost, RolloutQuery, Room
from controller.rollouts.stored_values import (
    check_spec,
    checked_id,
    host_schools,
    storable,
    written_out,
)
from controller.store.sql import SqlDatabase, Tx
from inventory.rollouts import (
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
)
from inventory.schedule import MAX_LESSON_SECONDS

_FINAL = [s.value for s in RolloutState if s.final]
# WINDOW is a reserved word in PostgreSQL; SQLite takes the quoted name too.
_WINDOW = '"window"'


class SqlRollouts:
    """A RolloutStore on the shared database; safe for several controllers on one."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        self._one_of = db.dialect.one_of
        self._listed = db.dialect.listed

    def create_rollout(
        self,
        spec: RolloutSpec,
        hosts: Sequence[NewHost],
        created_by: str,
        now: float,
        baseline: LessonRates,
    ) -> int:
        check_spec(spec, created_by)
        spec_text = spec_json(spec)
        schools = host_schools(hosts)
        pairs = {"hosts": json.dumps(schools, sort_keys=True)}
        ids = {"ids": self._listed(sorted(schools))}
        with self._db.transaction() as tx:
            # Refused before anything is written, as a rule; the claims below are
            # what holds when another controller claims the same hosts meanwhile.
            self._refuse_claimed(tx, ids)
            rollout_id = int(
                tx.execute(
                    "INSERT INTO rollouts (playbook, selector, spec, state, created_by, "
                    "created_at, updated_at, baseline_tried, baseline_failed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING rollout_id",
                    (
                        spec.playbook,
                        spec.selector,
                        spec_text,
                        RolloutState.RUNNING.value,
                        created_by,
                        now,
                        now,
                        baseline.tried,
                        baseline.failed,
                    ),
                ).fetchone()["rollout_id"]
            )
            # In device order, so that two rollouts claiming some of the same hosts
            # wait for each other, never each for the other (a deadlock). A claim held
            # by an unfinished transaction waits for it; DO NOTHING if it committed.
            # (The ORDER BY also keeps SQLite from reading ON as a join's.)
            claimed = tx.execute(
                "INSERT INTO rollout_claims (device_id, rollout_id) "
                f"SELECT key, :id FROM {self._db.dialect.json_pairs(':hosts')} AS j "
                "ORDER BY key ON CONFLICT (device_id) DO NOTHING",
                {**pairs, "id": rollout_id},
            ).rowcount
            if claimed != len(schools):
                self._refuse_claimed(tx, ids, rollout_id)
                raise StoreError("rollout hosts were claimed and given back meanwhile; retry")
            tx.execute(
                "INSERT INTO rollout_hosts (rollout_id, device_id, school_id) "
                f"SELECT :id, key, value FROM {self._db.dialect.json_pairs(':hosts')} AS j",
                {**pairs, "id": rollout_id},
            )
        return rollout_id

    def _refuse_claimed(self, tx: Tx, ids: dict[str, object], rollout_id: int = 0) -> None:
        """HostsClaimed if another rollout than ``rollout_id`` (0: none, the ids start
        at 1) holds one of ``ids``."""
        held = tx.execute(
            "SELECT device_id, rollout_id FROM rollout_claims "
            f"WHERE {self._one_of('device_id', ':ids')} AND rollout_id != :id",
            {**ids, "id": rollout_id},
        ).fetchall()
        if held:
            raise HostsClaimed({r["device_id"]: r["rollout_id"] for r in held})

    def _records(self, where: str, params: dict[str, object], limit: int) -> list[RolloutRecord]:
        # SQLite reads LIMIT -1 as no limit, PostgreSQL refuses it: none on both.
        rows = self._db.read(records_select(where), {**params, "limit": max(limit, 0)})
        return records(rows)

    def get_rollout(self, rollout_id: int) -> RolloutRecord | None:
        found = self._records("r.rollout_id = :id", {"id": rollout_id}, 1)
        return found[0] if found else None

    def list_rollouts(self, query: RolloutQuery) -> list[RolloutRecord]:
        where = ["true"]
        params: dict[str, object] = {}
        if query.states is not None:
            where.append(self._one_of("r.state", ":states"))
            params["states"] = self._listed(sorted(s.value for s in query.states))
        if query.schools is not None:
            # Like GetRollout: a rollout is seen only by who may see every school it touches.
            where.append(
                "NOT EXISTS (SELECT 1 FROM rollout_hosts AS h WHERE h.rollout_id = r.rollout_id "
                f"AND NOT ({self._one_of('h.school_id', ':schools')}))"
            )
            params["schools"] = self._listed(sorted(s for s in query.schools if storable(s)))
        return self._records(" AND ".join(where), params, query.limit)

    def rollout_schools(self, rollout_id: int) -> set[str]:
        rows = self._db.read(
            "SELECT DISTINCT school_id FROM rollout_hosts WHERE rollout_id = :id",
            {"id": rollout_id},
        )
        return {r["school_id"] for r in rows}

    def rollout_hosts(
        self, rollout_id: int, outcomes: frozenset[HostOutcome] | None = None
    ) -> list[HostResult]:
        only = "" if outcomes is None else f"AND {self._one_of('outcome', ':outs')}"
        by_device = self._db.dialect.by_code_point("device_id")
        rows = self._db.read(
            f"SELECT {HOST_COLUMNS} FROM rollout_hosts WHERE rollout_id = :id {only} "
            f"ORDER BY wave IS NULL, wave, {by_device}",
            {"id": rollout_id, "outs": self._listed(sorted(o.value for o in outcomes or ()))},
        )
        return [host(r) for r in rows]

    def rollout_host(self, rollout_id: int, device_id: str) -> HostResult | None:
        if not storable(device_id):
            return None
        rows = self._db.read(
            "SELECT * FROM rollout_hosts WHERE rollout_id = :id AND device_id = :device",
            {"id": rollout_id, "device": device_id},
        )
        return host(rows[0]) if rows else None

    def set_rollout_state(
        self, rollout_id: int, state: RolloutState, reason: str, now: float
    ) -> RolloutRecord | None:
        self._move(rollout_id, state, reason, now)
        return self.get_rollout(rollout_id)

    def end_rollout(self, rollout_id: int, state: RolloutState, reason: str, now: float) -> bool:
        if not state.final:
            raise ValueError(f"{state.value} is not a final state")
        return self._move(rollout_id, state, reason, now)

    def unfinished_rollouts(self) -> dict[int, RolloutState]:
        rows = self._db.read(
            f"SELECT rollout_id, state FROM rollouts WHERE NOT ({self._one_of('state', ':final')})",
            {"final": self._listed(_FINAL)},
        )
        return {int(r["rollout_id"]): RolloutState(r["state"]) for r in rows}

    def _move(self, rollout_id: int, state: RolloutState, reason: str, now: float) -> bool:
        """Moves an unfinished rollout to ``state``; False if it had ended (or is unknown)."""
        with self._db.transaction() as tx:
            # A final rollout has given its claims back: it stays as it ended. Of two
            # controllers ending it at once, the one that updates second finds it
            # ended and changes nothing (and is told so).
            moved = tx.execute(
                "UPDATE rollouts SET state = :state, reason = :reason, updated_at = :now, "
                "finished_at = :finished WHERE rollout_id = :id "
                f"AND NOT ({self._one_of('state', ':final')})",
                {
                    "state": state.value,
                    "reason": written_out(reason),
                    "now": now,
                    "finished": now if state.final else None,
                    "id": rollout_id,
                    "final": self._listed(_FINAL),
                },
            ).rowcount
            if moved and state.final:
                tx.execute(
                    "UPDATE rollout_waves SET finished_at = ? "
                    "WHERE rollout_id = ? AND finished_at IS NULL",
                    (now, rollout_id),
                )
                # A slice no controller claimed never ran: its hosts are cancelled.
                # A claimed one is finished by its claimer, which stops its run.
                unrun = tx.execute(
                    "UPDATE rollout_slices SET finished_at = ? WHERE rollout_id = ? "
                    "AND finished_at IS NULL AND claimed_by = '' RETURNING wave, slice",
                    (now, rollout_id),
                ).fetchall()
                tx.executemany(
                    "UPDATE rollout_hosts SET outcome = 'pending' "
                    "WHERE rollout_id = ? AND wave = ? AND slice = ? AND outcome = 'running'",
                    [(rollout_id, r["wave"], r["slice"]) for r in unrun],
                )
                # A running host's playbook was stopped (it may be half changed); a
                # pending one was never touched. finish_wave may still say better.
                tx.execute(
                    "UPDATE rollout_hosts SET finished_at = ?, outcome = CASE outcome "
                    "WHEN 'running' THEN 'interrupted' ELSE 'cancelled' END "
                    "WHERE rollout_id = ? AND outcome IN ('pending', 'running')",
                    (now, rollout_id),
                )
                tx.execute("DELETE FROM rollout_claims WHERE rollout_id = ?", (rollout_id,))
        return bool(moved)

    def set_waiting(self, rollout_id: int, waiting: str, now: float) -> None:
        # Called on every pass of the engine: only a change is written.
        self._db.write(
            "UPDATE rollouts SET waiting = :waiting, updated_at = :now "
            "WHERE rollout_id = :id AND waiting != :waiting",
            {"waiting": written_out(waiting), "now": now, "id": rollout_id},
        )

    def start_wave(
        self,
        rollout_id: int,
        wave: int,
        device_ids: Sequence[str],
        now: float,
        slice_hosts: int = SLICE_HOSTS,
    ) -> None:
        key = {"id": rollout_id, "wave": wave}
        slices = cut([d for d in dict.fromkeys(device_ids) if storable(d)], slice_hosts)
        with self._db.transaction() as tx:
            # The wave's row first: a second start of the same wave (another
            # controller's) is refused before it moves any host.
            opened = tx.execute(
                "INSERT INTO rollout_waves (rollout_id, wave, hosts, started_at) "
                "VALUES (:id, :wave, 0, :now) ON CONFLICT (rollout_id, wave) DO NOTHING",
                {**key, "now": now},
            ).rowcount
            if not opened:
                raise StoreError(f"rollout {rollout_id}: wave {wave} was started already")
            total = 0
            for n, members in enumerate(slices, start=1):
                moved = tx.execute(
                    "UPDATE rollout_hosts SET wave = :wave, slice = :slice, outcome = 'running', "
                    "started_at = :now WHERE rollout_id = :id AND outcome = 'pending' AND "
                    f"{self._one_of('device_id', ':ids')}",
                    {
                        **key,
                        "slice": n,
                        "now": now,
                        "ids": self._listed(members),
                    },
                ).rowcount
                if moved:
                    tx.execute(
                        "INSERT INTO rollout_slices (rollout_id, wave, slice, hosts) "
                        "VALUES (:id, :wave, :slice, :moved)",
                        {**key, "slice": n, "moved": moved},
                    )
                total += moved
            tx.execute(
                "UPDATE rollout_waves SET hosts = :moved WHERE rollout_id = :id AND wave = :wave",
                {**key, "moved": total},
            )

    def finish_wave(
        self, rollout_id: int, wave: int, results: Sequence[HostResult], now: float
    ) -> None:
        key = {"id": rollout_id, "wave": wave}
        with self._db.transaction() as tx:
            # The wave's row is held until this commits: another closing of the wave
            # waits, and then counts this one's hosts too.
            tx.execute(
                "SELECT wave FROM rollout_waves WHERE rollout_id = :id AND wave = :wave"
                + self._db.dialect.for_update,
                key,
            )
            # Once closed, nothing of the wave is left to run.
            tx.execute(
                "UPDATE rollout_slices SET finished_at = :now "
                "WHERE rollout_id = :id AND wave = :wave AND finished_at IS NULL",
                {**key, "now": now},
            )
            # Any host of the wave, even one an abort has cancelled since: what the
            # playbook did to it is what it did. A device id no host can have is left
            # out rather than failing the others' results.
            tx.executemany(
                "UPDATE rollout_hosts SET outcome = ?, task = ?, message = ?, rc = ?, "
                "stdout = ?, stderr = ?, detail = ?, finished_at = ? "
                "WHERE rollout_id = ? AND device_id = ? AND wave = ?",
                [
                    (
                        r.outcome.value,
                        *stored_result(r),
                        now if r.finished_at is None else r.finished_at,
                        rollout_id,
                        r.device_id,
                        wave,
                    )
                    for r in results
                    if storable(r.device_id)
                ],
            )
            tx.execute(
                "UPDATE rollout_waves SET finished_at = :now, failed = (SELECT count(*) "
                "FROM rollout_hosts WHERE rollout_id = :id AND wave = :wave "
                "AND outcome IN ('failed', 'unreachable')) WHERE rollout_id = :id AND wave = :wave",
                {**key, "now": now},
            )

    def set_windows(self, school_id: str, windows: Sequence[str]) -> None:
        checked_id("school id", school_id)
        rows = [(school_id, checked_id("maintenance window", w)) for w in windows]
        with self._db.transaction() as tx:
            # A key only one transaction can hold: another replacing this school's
            # windows waits at this insert until this one ends (the row is deleted
            # below, so it is never seen), and then deletes what this one wrote.
            # Without it, neither would see the other's new rows and both would stay.
            tx.execute(
                f"INSERT INTO maintenance_windows (school_id, {_WINDOW}) VALUES (?, '') "
                f"ON CONFLICT (school_id, {_WINDOW}) DO NOTHING",
                (school_id,),
            )
            tx.execute("DELETE FROM maintenance_windows WHERE school_id = ?", (school_id,))
            tx.executemany(
                f"INSERT INTO maintenance_windows (school_id, {_WINDOW}) VALUES (?, ?) "
                f"ON CONFLICT (school_id, {_WINDOW}) DO NOTHING",
                rows,
            )

    def windows(self, school_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
        dialect = self._db.dialect
        only = "" if school_ids is None else f"WHERE {self._one_of('school_id', ':s')}"
        # In code point order, as the admin API sorts them before storing.
        rows = self._db.read(
            f"SELECT school_id, {_WINDOW} FROM maintenance_windows {only} ORDER BY "
            f"{dialect.by_code_point('school_id')}, {dialect.by_code_point(_WINDOW)}",
            {"s": self._listed(sorted(s for s in school_ids or () if storable(s)))},
        )
        found: dict[str, list[str]] = {}
        for r in rows:
            found.setdefault(r["school_id"], []).append(r["window"])
        return found

    def busy_rooms(self, rooms: Iterable[Room], since: float, until: float) -> dict[Room, float]:
        wanted = {(s, r) for s, r in rooms if storable(s) and storable(r)}
        # A lesson is at most MAX_LESSON_SECONDS long (parse_row refuses longer ones,
        # and a lesson launched by hand is a parsed row too): only lessons starting
        # that long before ``since`` can overlap, so the index on (school, room,
        # start) reads a day of each room, not its year. It is read for every room
        # id in every school asked about; the pairs not asked about are dropped here.
        rows = self._db.read(
            "SELECT l.school_id, l.room_id, max(l.ends_at) AS free_at FROM lessons AS l "
            f"WHERE {self._one_of('l.school_id', ':schools')} "
            f"AND {self._one_of('l.room_id', ':rooms')} "
            "AND l.starts_at >= :since - :longest AND l.starts_at < :until "
            "AND l.ends_at > :since GROUP BY l.school_id, l.room_id",
            {
                "schools": self._listed(sorted({s for s, _ in wanted})),
                "rooms": self._listed(sorted({r for _, r in wanted})),
                "since": since,
                "until": until,
                "longest": MAX_LESSON_SECONDS,
            },
        )
        found = {(r["school_id"], r["room_id"]): r["free_at"] for r in rows}
        return {room: free_at for room, free_at in found.items() if room in wanted}

    def lesson_rates(self, device_ids: Iterable[str], since: float, until: float) -> LessonRates:
        rows = self._db.read(
            "SELECT count(*) AS tried, coalesce(sum(CASE WHEN p.failed_reason IS NOT NULL "
            "OR p.launched_at IS NULL THEN 1 ELSE 0 END), 0) AS failed "
            "FROM lessons AS l JOIN lesson_panels AS p ON p.lesson_id = l.lesson_id "
            "WHERE l.starts_at >= :since AND l.starts_at < :until "
            f"AND {self._one_of('p.device_id', ':ids')}",
            {
                "ids": self._listed(sorted({d for d in device_ids if storable(d)})),
                "since": since,
                "until": until,
            },
        )
        return LessonRates(int(rows[0]["tried"]), int(rows[0]["failed"]))
