"""Devices in the SQLite store: who they are, their streams, heartbeats and reports.

Heartbeats, command results and lesson events are written in one transaction per
batch (the ingest writer's thread); reads use a connection per thread, so scrapes and
admin calls never wait for a write batch. Acks promise durability, hence
``synchronous=FULL``: batching keeps its fsync cost to one per batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Sequence

from controller.errors import StoreError
from controller.fleet.store import DeviceQuery, SelectedDevice
from controller.store.rows import (
    AgentRow,
    CommandResultRow,
    HeartbeatRow,
    LessonEventRow,
    StoredLessonEvent,
)
from controller.store.sql import SqlDatabase, Tx
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

log = logging.getLogger(__name__)

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


# One statement for every heartbeat, with or without a verdict (NULL keeps the
# stored one), bound by position: the writer's hot path. In SET clauses last_seq
# is still the old value; a device's first message starts no gap, since the
# controller may be newer than the device's spool.
_HEARTBEAT_SQL = """
    UPDATE devices SET last_heartbeat = ?1,
        seq_gaps = seq_gaps + CASE WHEN last_seq > 0 THEN ?2 - last_seq - 1 ELSE 0 END,
        last_seq = ?2, heartbeats_stored = heartbeats_stored + 1, collected_at = ?3,
        cpu_percent = ?4, memory_percent = ?5, disk_percent = ?6, uptime_seconds = ?7,
        load1 = ?8, load5 = ?9, load15 = ?10, condition = COALESCE(?11, condition),
        reasons = COALESCE(?12, reasons), spool_pending = COALESCE(?13, spool_pending),
        spool_dropped = COALESCE(?14, spool_dropped)
    WHERE device_id = ?15 AND last_seq < ?2
"""
_REPORTS_SQL = """
    INSERT INTO device_reports VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (device_id) DO UPDATE SET system_report = excluded.system_report,
        network_report = excluded.network_report, report_at = excluded.report_at,
        report_collected_at = excluded.report_collected_at
    WHERE excluded.report_collected_at > device_reports.report_collected_at
"""
_RESULT_SEQ_SQL = """
    UPDATE devices SET
        seq_gaps = seq_gaps + CASE WHEN last_seq > 0 THEN ?2 - last_seq - 1 ELSE 0 END,
        last_seq = ?2
    WHERE device_id = ?1 AND last_seq < ?2
"""


def _heartbeat_params(r: HeartbeatRow) -> tuple[object, ...]:
    h, report = r.health, r.report
    verdict: tuple[object, ...] = (None, None, None, None)
    if report is not None:
        verdict = (
            report.condition.value,
            "\n".join(report.reasons),
            report.spool_pending,
            report.spool_dropped,
        )
    return (
        r.received_at,
        r.seq,
        h.collected_at,
        h.cpu_percent,
        h.memory_percent,
        h.disk_percent,
        h.uptime_seconds,
        h.load1,
        h.load5,
        h.load15,
        *verdict,
        r.device_id,
    )


def _is_heartbeat(row: AgentRow) -> bool:
    return isinstance(row, HeartbeatRow)


def _record(row: sqlite3.Row) -> DeviceRecord:
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
    """The fleet's DeviceStore on the shared SQLite database."""

    def __init__(
        self,
        db: SqlDatabase,
        enrollment_of: Callable[[str], Enrollment | None],
        lesson_event: Callable[[Tx, LessonEventRow], StoredLessonEvent | None],
    ) -> None:
        self._db = db
        # The enrollment shown with a device (the enroll feature's store).
        self._enrollment_of = enrollment_of
        # Stores a panel's lesson event inside record_messages' transaction (the
        # lessons feature's store): a batch is stored whole or not at all.
        self._lesson_event = lesson_event

    def device_connected(
        self, identity: DeviceIdentity, stream_id: int, offline_after: float, now: float
    ) -> int:
        with self._db.write_lock:
            try:
                row = self._db.writer.execute(
                    """
                    INSERT INTO devices (device_id, kind, school_id, room_id, hostname,
                                         agent_version, first_seen, stream_id, offline_after,
                                         os_name, os_version, kernel, boot_time, address,
                                         labels)
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
                    self._db.writer.execute(
                        "INSERT OR IGNORE INTO rooms VALUES (?, ?)",
                        (identity.school_id, identity.room_id),
                    )
            except sqlite3.Error as exc:
                raise StoreError(f"database {self._db.path}: {exc}") from None
        return int(row[0])

    def device_disconnected(self, device_id: str, stream_id: int) -> None:
        self._db.write(
            "UPDATE devices SET stream_id = 0 WHERE device_id = ? AND stream_id = ?",
            (device_id, stream_id),
        )

    def reset_streams(self) -> int:
        return self._db.write("UPDATE devices SET stream_id = 0 WHERE stream_id != 0", ())

    def record_messages(self, rows: Sequence[AgentRow]) -> list[StoredLessonEvent]:
        events: list[StoredLessonEvent] = []
        with self._db.write_lock:
            try:
                self._db.writer.execute("BEGIN IMMEDIATE")
                # Every message shares the device's sequence: runs keep the order.
                for is_beat, run in itertools.groupby(rows, _is_heartbeat):
                    if not is_beat:
                        for r in run:
                            if isinstance(r, CommandResultRow):
                                self._record_result(r)
                            elif isinstance(r, LessonEventRow):
                                stored = self._lesson_event(self._db.writer, r)
                                if stored is not None:
                                    events.append(stored)
                        continue
                    beats = [r for r in run if isinstance(r, HeartbeatRow)]
                    self._db.writer.executemany(_HEARTBEAT_SQL, map(_heartbeat_params, beats))
                    reports = [
                        (
                            r.device_id,
                            r.report.system,
                            r.report.network,
                            r.received_at,
                            r.health.collected_at,
                        )
                        for r in beats
                        if r.report is not None and (r.report.system or r.report.network)
                    ]
                    if reports:
                        self._db.writer.executemany(_REPORTS_SQL, reports)
                    self._record_wifi(beats)
                self._db.writer.execute("COMMIT")
            # OverflowError: a number SQLite cannot hold. The ingest checks refuse those
            # first; should one slip through, the batch is refused, not the writer killed.
            except (sqlite3.Error, OverflowError) as exc:
                if self._db.writer.in_transaction:
                    self._db.writer.execute("ROLLBACK")
                raise StoreError(f"database {self._db.path}: {exc}") from None
        return events

    def _record_wifi(self, beats: Sequence[HeartbeatRow]) -> None:
        """What each full network report says of the Wi-Fi: the device's association
        (or none), and when each BSSID was last seen by any device."""
        full = [b for b in beats if b.report is not None and b.report.network]
        if not full:
            return
        self._db.writer.executemany(
            "DELETE FROM device_wifi WHERE device_id = ?", [(b.device_id,) for b in full]
        )
        associated = [(b, b.report.wifi[0]) for b in full if b.report and b.report.wifi]
        self._db.writer.executemany(
            "INSERT OR REPLACE INTO device_wifi VALUES (?, ?, ?, ?)",
            [(b.device_id, bssid, signal, b.received_at) for b, (bssid, signal) in associated],
        )
        self._db.writer.executemany(
            "INSERT INTO bssid_seen VALUES (?, ?) ON CONFLICT (bssid) DO UPDATE"
            " SET seen_at = max(seen_at, excluded.seen_at)",
            [(bssid, b.received_at) for b in full if b.report for bssid, _ in b.report.wifi],
        )

    def _record_result(self, r: CommandResultRow) -> None:
        moved = self._db.writer.execute(_RESULT_SEQ_SQL, (r.device_id, r.seq)).rowcount
        if moved:
            self._db.writer.execute(
                "INSERT INTO command_results VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    r.device_id,
                    r.seq,
                    r.command_id,
                    r.status,
                    r.message,
                    r.finished_at,
                    r.received_at,
                ),
            )

    def command_results(self, device_id: str, limit: int) -> list[CommandOutcome]:
        rows = self._db.read(
            "SELECT * FROM command_results WHERE device_id = :id ORDER BY seq DESC LIMIT :limit",
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
        where = ["device_id > :after"]
        params: dict[str, object] = {"now": now, "after": query.after_id, "limit": query.limit}
        if query.school_id is not None:
            where.append("school_id = :school")
            params["school"] = query.school_id
        if query.schools is not None:
            where.append("school_id IN (SELECT value FROM json_each(:schools))")
            params["schools"] = json.dumps(sorted(query.schools))
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
            "ORDER BY device_id LIMIT :limit"
        )
        return [_record(row) for row in self._db.read(sql, params)]

    def select_devices(
        self, selector: Selector, schools: frozenset[str] | None, now: float
    ) -> list[SelectedDevice]:
        # Every value is a bound parameter, never SQL text: selectors come from people.
        where: list[str] = []
        params: dict[str, object] = {"now": now}
        wanted: list[tuple[str, str, frozenset[str] | None]] = [
            ("school_id", "schools", schools),
            ("school_id", "selected_schools", selector.schools or None),
            ("room_id", "rooms", selector.rooms or None),
            ("kind", "kinds", frozenset(k.value for k in selector.kinds) or None),
            # As a DeviceRecord reads it: no OS without a kernel.
            (_OS_VERSION_SQL, "os_versions", selector.os_versions or None),
            ("device_id", "devices", selector.devices or None),
        ]
        for column, name, values in wanted:
            if values is not None:
                where.append(f"{column} IN (SELECT value FROM json_each(:{name}))")
                params[name] = json.dumps(sorted(values))
        for n, (label, values) in enumerate(selector.labels):
            where.append(
                f"EXISTS (SELECT 1 FROM json_each(devices.labels) AS l WHERE l.key = :label{n} "
                f"AND l.value IN (SELECT value FROM json_each(:label_values{n})))"
            )
            params[f"label{n}"] = label
            params[f"label_values{n}"] = json.dumps(sorted(values))
        sql = (
            f"SELECT device_id, school_id, {ONLINE_SQL} AS online FROM devices "
            f"WHERE {' AND '.join(where) or '1'} ORDER BY device_id"
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
        rows = self._db.read(
            f"SELECT {_DEVICE_COLUMNS} FROM {_DEVICES_FROM} "
            "WHERE device_id IN (SELECT value FROM json_each(:ids)) ORDER BY device_id",
            {"ids": json.dumps(sorted(set(device_ids))), "now": now},
        )
        return [_record(row) for row in rows]

    def get_device(self, device_id: str, now: float) -> DeviceRecord | None:
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
        where = "WHERE school_id = :school" if school_id is not None else ""
        rows = self._db.read(
            f"""
            SELECT school_id, kind, SUM({ONLINE_SQL}) AS online, COUNT(*) AS total
            FROM devices {where} GROUP BY school_id, kind ORDER BY school_id, kind
            """,
            {"now": now, "school": school_id},
        )
        return [
            KindCount(
                school_id=r["school_id"],
                kind=DeviceKind(r["kind"]),
                online=r["online"],
                offline=r["total"] - r["online"],
            )
            for r in rows
        ]

    def school_reports(self, now: float) -> list[SchoolReports]:
        rows = self._db.read(
            f"""
            SELECT school_id,
                   SUM({ONLINE_SQL} AND condition = 'ok') AS ok,
                   SUM({ONLINE_SQL} AND condition = 'degraded') AS degraded,
                   SUM({ONLINE_SQL} AND condition = 'critical') AS critical,
                   SUM(seq_gaps) AS missing, SUM(spool_dropped) AS dropped
            FROM devices GROUP BY school_id ORDER BY school_id
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
