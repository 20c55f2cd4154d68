"""Devices in the store, on SQLite or PostgreSQL: who they are, their streams,
heartbeats and reports.

Heartbeats, command results and lesson events are written in one transaction per
batch (the ingest writer's thread, controller/fleet/sql_batch.py), acked once
committed: batching keeps the cost of durability to one commit per batch. Several
controllers may share a PostgreSQL database: every write is one statement whose
condition reads the row it changes (an upsert, ``stream_id = ?``, ``last_seq < ?``),
so none acts on a value another has changed since. What a device's values become in
the store (NULs, ids) is controller/fleet/stored_values.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Iterable, Sequence

from controller.errors import StoreError
from controller.fleet.sql_batch import LessonEvent, store_batch
from controller.fleet.store import DeviceQuery, SelectedDevice
from controller.fleet.stored_values import page_after, storable_key, stored_identity, stored_text
from controller.store.rows import AgentRow, StoredLessonEvent
from controller.store.sql import Row, SqlDatabase
from inventory.model import (
    CommandOutcome,
    Condition,
    DeviceIdentity,
    DeviceKind,
    DeviceRecord,
    DeviceReport,
    DeviceStatus,
    Enrollment,
    Health,
    KindCount,
    OsInfo,
    SchoolReports,
)
from inventory.rollouts import Selector

# The status rule, in one place: online while a stream carries the device and its
# last heartbeat is within the device's own deadline.
ONLINE_SQL = (
    "(stream_id != 0 AND last_heartbeat IS NOT NULL AND last_heartbeat >= :now - offline_after)"
)

_DEVICE_COLUMNS = (
    "device_id, kind, school_id, room_id, hostname, agent_version, first_seen, stream_id, "
    "offline_after, last_heartbeat, last_seq, collected_at, cpu_percent, memory_percent, "
    "disk_percent, uptime_seconds, load1, load5, load15, os_name, os_version, kernel, "
    "boot_time, condition, reasons, system_report, network_report, report_at, spool_pending, "
    f"spool_dropped, heartbeats_stored, seq_gaps, address, labels, {ONLINE_SQL} AS online"
)
_DEVICES_FROM = "devices LEFT JOIN device_reports USING (device_id)"
_OS_VERSION_SQL = "(CASE WHEN COALESCE(kernel, '') != '' THEN COALESCE(os_version, '') ELSE '' END)"

# Command results shown with a device.
_RECENT_COMMANDS = 10


def _record(row: Row) -> DeviceRecord:
    health = None
    if row["collected_at"] is not None:
        health = Health(
            collected_at=row["collected_at"],
            cpu_percent=row["cpu_percent"],
            memory_percent=row["memory_percent"],
            disk_percent=row["disk_percent"],
            uptime_seconds=row["uptime_seconds"],
            load1=row["load1"],
            load5=row["load5"],
            load15=row["load15"],
        )
    report = None
    if row["condition"] is not None:
        report = DeviceReport(
            condition=Condition(row["condition"]),
            reasons=tuple(row["reasons"].splitlines()),
            system=row["system_report"] or b"",
            network=row["network_report"] or b"",
            spool_pending=row["spool_pending"],
            spool_dropped=row["spool_dropped"],
            report_at=row["report_at"],
        )
    os_info = None
    if row["kernel"]:
        os_info = OsInfo(row["os_name"], row["os_version"], row["kernel"], row["boot_time"])
    return DeviceRecord(
        identity=DeviceIdentity(
            device_id=row["device_id"],
            kind=DeviceKind(row["kind"]),
            school_id=row["school_id"],
            room_id=row["room_id"],
            hostname=row["hostname"],
            agent_version=row["agent_version"],
            os=os_info,
            address=row["address"],
            labels=_labels(row["labels"]),
        ),
        status=DeviceStatus.ONLINE if row["online"] else DeviceStatus.OFFLINE,
        stream_up=row["stream_id"] != 0,
        first_seen=row["first_seen"],
        last_heartbeat=row["last_heartbeat"],
        offline_after=row["offline_after"],
        last_seq=row["last_seq"],
        health=health,
        report=report,
        heartbeats_stored=row["heartbeats_stored"],
        seq_gaps=row["seq_gaps"],
    )


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    # Written by device_connected from checked labels only, so it is a flat object.
    return tuple(sorted(json.loads(text).items()))


class SqlDevices:
    """The fleet's DeviceStore on the database every feature shares (SQLite or
    PostgreSQL)."""

    def __init__(
        self,
        db: SqlDatabase,
        enrollment_of: Callable[[str], Enrollment | None],
        lesson_event: LessonEvent,
    ) -> None:
        self._db = db
        # The enrollment shown with a device (the enroll feature's store).
        self._enrollment_of = enrollment_of
        # Stores a panel's lesson event inside record_messages' transaction (the
        # lessons feature's store): a batch is stored whole or not at all.
        self._lesson_event = lesson_event
        # PostgreSQL takes a batch's rows as JSON documents (controller/fleet/sql_batch.py).
        self._documents = db.dialect.name == "postgresql"

    def device_connected(
        self, identity: DeviceIdentity, stream_id: int, offline_after: float, now: float
    ) -> int:
        identity = stored_identity(identity)
        with self._db.transaction() as tx:
            row = tx.execute(
                """
                INSERT INTO devices (device_id, kind, school_id, room_id, hostname,
                                     agent_version, first_seen, stream_id, offline_after,
                                     os_name, os_version, kernel, boot_time, address, labels)
                VALUES (:device_id, :kind, :school_id, :room_id, :hostname,
                        :agent_version, :now, :stream_id, :offline_after,
                        :os_name, :os_version, :kernel, :boot_time, :address, :labels)
                ON CONFLICT (device_id) DO UPDATE SET
                    kind = excluded.kind, school_id = excluded.school_id,
                    room_id = excluded.room_id, hostname = excluded.hostname,
                    agent_version = excluded.agent_version,
                    stream_id = excluded.stream_id, offline_after = excluded.offline_after,
                    os_name = excluded.os_name, os_version = excluded.os_version,
                    kernel = excluded.kernel, boot_time = excluded.boot_time,
                    address = excluded.address, labels = excluded.labels
                RETURNING last_seq
                """,
                {
                    "device_id": identity.device_id,
                    "kind": identity.kind.value,
                    "school_id": identity.school_id,
                    "room_id": identity.room_id,
                    "hostname": identity.hostname,
                    "agent_version": identity.agent_version,
                    "now": now,
                    "stream_id": stream_id,
                    "offline_after": offline_after,
                    "os_name": identity.os.name if identity.os else None,
                    "os_version": identity.os.version if identity.os else None,
                    "kernel": identity.os.kernel if identity.os else "",
                    "boot_time": identity.os.boot_time if identity.os else None,
                    "address": identity.address,
                    "labels": json.dumps(dict(identity.labels), sort_keys=True),
                },
            ).fetchone()
            if identity.room_id:
                tx.execute(
                    "INSERT INTO rooms (school_id, room_id) VALUES (?, ?)"
                    " ON CONFLICT (school_id, room_id) DO NOTHING",
                    (identity.school_id, identity.room_id),
                )
        return int(row["last_seq"])

    def device_disconnected(self, device_id: str, stream_id: int) -> None:
        if not storable_key(device_id):
            return
        self._db.write(
            "UPDATE devices SET stream_id = 0 WHERE device_id = ? AND stream_id = ?",
            (device_id, stream_id),
        )

    def reset_streams(self, ids: range | None = None) -> int:
        if ids is None:
            return self._db.write("UPDATE devices SET stream_id = 0 WHERE stream_id != 0")
        return self._db.write(
            "UPDATE devices SET stream_id = 0 WHERE stream_id >= :first AND stream_id < :stop",
            {"first": ids.start, "stop": ids.stop},
        )

    def record_messages(self, rows: Sequence[AgentRow]) -> list[StoredLessonEvent]:
        try:
            with self._db.transaction() as tx:
                return store_batch(tx, rows, self._lesson_event, documents=self._documents)
        # A number the database cannot hold (SQLite's driver raises before sending it).
        # The ingest checks refuse those first; should one slip through, the batch is
        # refused, not the writer killed.
        except OverflowError as exc:
            raise StoreError(f"database {self._db.name}: {exc}") from None

    def command_results(self, device_id: str, limit: int) -> list[CommandOutcome]:
        if not storable_key(device_id):
            return []
        rows = self._db.read(
            "SELECT command_id, status, message, finished_at, received_at, seq"
            " FROM command_results WHERE device_id = :id ORDER BY seq DESC LIMIT :limit",
            {"id": device_id, "limit": limit},
        )
        return [
            CommandOutcome(
                command_id=r["command_id"],
                status=r["status"],
                message=r["message"],
                finished_at=r["finished_at"],
                received_at=r["received_at"],
                seq=r["seq"],
            )
            for r in rows
        ]

    def list_devices(self, query: DeviceQuery, now: float) -> list[DeviceRecord]:
        dialect = self._db.dialect
        # Paged and ordered by code point on both databases (a PostgreSQL locale would
        # order "d-1" and "d.1" otherwise, and a page would skip or repeat devices).
        device_id = dialect.by_code_point("device_id")
        where = [f"{device_id} > :after"]
        params: dict[str, object] = {
            "now": now,
            "after": page_after(query.after_id),
            "limit": query.limit,
        }
        if query.school_id is not None:
            if not storable_key(query.school_id):
                return []
            where.append("school_id = :school")
            params["school"] = query.school_id
        if query.schools is not None:
            where.append(dialect.one_of("school_id", ":schools"))
            params["schools"] = dialect.listed(_keys(query.schools))
        if query.kind is not None:
            where.append("kind = :kind")
            params["kind"] = query.kind.value
        if query.status is not None:
            where.append(ONLINE_SQL if query.status is DeviceStatus.ONLINE else f"NOT {ONLINE_SQL}")
        if query.condition is not None:
            where.append("condition = :condition")
            params["condition"] = query.condition.value
        sql = (
            f"SELECT {_DEVICE_COLUMNS} FROM {_DEVICES_FROM} WHERE {' AND '.join(where)} "
            f"ORDER BY {device_id} LIMIT :limit"
        )
        return [_record(row) for row in self._db.read(sql, params)]

    def select_devices(
        self, selector: Selector, schools: frozenset[str] | None, now: float
    ) -> list[SelectedDevice]:
        # Every value is a bound parameter, never SQL text: selectors come from people.
        # Ids are kept exactly or not at all, text with its NULs written out
        # (stored_values): a selector's values are shaped alike, so they match.
        dialect = self._db.dialect
        where: list[str] = []
        params: dict[str, object] = {"now": now}
        # An empty set is a key the selector does not give (None: no scope); a given one
        # whose ids no device can have matches nothing.
        wanted: list[tuple[str, str, list[str] | None]] = [
            ("school_id", "schools", None if schools is None else _keys(schools)),
            ("school_id", "selected_schools", _given(selector.schools)),
            ("room_id", "rooms", _given(selector.rooms)),
            ("kind", "kinds", sorted(k.value for k in selector.kinds) or None),
            # As a DeviceRecord reads it: no OS without a kernel.
            (_OS_VERSION_SQL, "os_versions", _texts(selector.os_versions) or None),
            ("device_id", "devices", _given(selector.devices)),
        ]
        for column, name, listed in wanted:
            if listed is not None:
                where.append(dialect.one_of(column, f":{name}"))
                params[name] = dialect.listed(listed)
        for n, (label, values) in enumerate(selector.labels):
            where.append(
                f"EXISTS (SELECT 1 FROM {dialect.json_pairs('devices.labels')} AS l "
                f"WHERE l.key = :label{n} AND {dialect.one_of('l.value', f':label_values{n}')})"
            )
            params[f"label{n}"] = stored_text(label)
            params[f"label_values{n}"] = dialect.listed(_texts(values))
        device_id = dialect.by_code_point("device_id")
        sql = (
            f"SELECT device_id, school_id, {ONLINE_SQL} AS online FROM devices "
            f"WHERE {' AND '.join(where) or '1 = 1'} ORDER BY {device_id}"
        )
        return [
            SelectedDevice(
                row["device_id"],
                row["school_id"],
                DeviceStatus.ONLINE if row["online"] else DeviceStatus.OFFLINE,
            )
            for row in self._db.read(sql, params)
        ]

    def devices_by_id(self, device_ids: Collection[str], now: float) -> list[DeviceRecord]:
        ids = _keys(device_ids)
        if not ids:
            return []
        dialect = self._db.dialect
        rows = self._db.read(
            f"SELECT {_DEVICE_COLUMNS} FROM {_DEVICES_FROM} "
            f"WHERE {dialect.one_of('device_id', ':ids')} "
            f"ORDER BY {dialect.by_code_point('device_id')}",
            {"ids": dialect.listed(ids), "now": now},
        )
        return [_record(row) for row in rows]

    def get_device(self, device_id: str, now: float) -> DeviceRecord | None:
        if not storable_key(device_id):
            return None
        rows = self._db.read(
            f"SELECT {_DEVICE_COLUMNS} FROM {_DEVICES_FROM} WHERE device_id = :id",
            {"id": device_id, "now": now},
        )
        if not rows:
            return None
        commands = tuple(self.command_results(device_id, _RECENT_COMMANDS))
        return dataclasses.replace(
            _record(rows[0]),
            recent_commands=commands,
            enrollment=self._enrollment_of(device_id),
        )

    def fleet_counts(self, now: float, school_id: str | None = None) -> list[KindCount]:
        if school_id is not None and not storable_key(school_id):
            return []
        where = "WHERE school_id = :school" if school_id is not None else ""
        order = ", ".join(self._db.dialect.by_code_point(c) for c in ("school_id", "kind"))
        rows = self._db.read(
            f"""
            SELECT school_id, kind, SUM({_counted(ONLINE_SQL)}) AS online, COUNT(*) AS total
            FROM devices {where} GROUP BY school_id, kind ORDER BY {order}
            """,
            {"now": now, "school": school_id},
        )
        return [
            KindCount(
                school_id=r["school_id"],
                kind=DeviceKind(r["kind"]),
                online=int(r["online"]),
                offline=int(r["total"]) - int(r["online"]),
            )
            for r in rows
        ]

    def school_reports(self, now: float) -> list[SchoolReports]:
        def online_and(condition: Condition) -> str:
            return _counted(f"{ONLINE_SQL} AND condition = '{condition.value}'")

        rows = self._db.read(
            f"""
            SELECT school_id,
                   SUM({online_and(Condition.OK)}) AS ok,
                   SUM({online_and(Condition.DEGRADED)}) AS degraded,
                   SUM({online_and(Condition.CRITICAL)}) AS critical,
                   SUM(seq_gaps) AS missing, SUM(spool_dropped) AS dropped
            FROM devices GROUP BY school_id ORDER BY {self._db.dialect.by_code_point("school_id")}
            """,
            {"now": now},
        )
        return [
            SchoolReports(
                school_id=r["school_id"],
                conditions={c: int(r[c.value]) for c in Condition if r[c.value]},
                messages_missing=int(r["missing"]),
                spool_dropped=int(r["dropped"]),
            )
            for r in rows
        ]


def _counted(condition: str) -> str:
    # PostgreSQL sums no booleans; SQLite's are 0 and 1 already.
    return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


def _keys(values: Iterable[str]) -> list[str]:
    """Ids as a list to bind, sorted; those no device can have are left out."""
    return sorted(v for v in set(values) if storable_key(v))


def _given(values: frozenset[str]) -> list[str] | None:
    """A selector's ids to bind; None where it gives none (an empty set)."""
    return _keys(values) if values else None


def _texts(values: Iterable[str]) -> list[str]:
    """Text values as a list to bind, shaped as the store keeps them."""
    return sorted({stored_text(v) for v in values})
