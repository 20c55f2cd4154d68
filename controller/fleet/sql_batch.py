"""A batch of devices' messages stored in one transaction, on either database: the
ingest writer's hot path (controller/fleet/writer.py), acked once committed.

Heartbeats, command results and lesson events share each device's sequence, so the
batch is stored in its order, a run of heartbeats at a time. Every write is a single
statement whose condition reads the row it changes (``last_seq < new``, a report's
collection time), never a read followed by a write: two controllers storing the same
device's messages at once (a device that moved between replicas, a replay) count each
message once, PostgreSQL re-checking the condition on the row the other committed.

SQLite takes a run's rows one statement each (executemany, positional: its fastest
way). PostgreSQL takes them as one JSON document per statement (``_PG_*`` below):
there each statement costs its share of a round trip and an executor start, and
psycopg dumps a list bound as an array in Python, element by element, while a
document is one call of the json module's C encoder. On bench/store_ingest.py's
batches this stored 1.5 to 1.7 times as many heartbeats a second as one statement per
row, and more than unnest() of 15 bound arrays. The documents' rows are the SQLite
statements' parameter tuples, read by position (``e->>n``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Sequence

from controller.fleet.stored_values import storable_key, stored_text
from controller.store.rows import (
    AgentRow,
    CommandResultRow,
    HeartbeatRow,
    LessonEventRow,
    StoredLessonEvent,
)
from controller.store.sql import Tx

LessonEvent = Callable[[Tx, LessonEventRow], StoredLessonEvent | None]

# One statement for every heartbeat, with or without a verdict (NULL keeps the
# stored one). In SET clauses last_seq is still the old value; a device's first
# message starts no gap, since the controller may be newer than the device's spool.
# The seq is bound three times: plain ``?`` (no numbered placeholders on PostgreSQL;
# named ones would cost SQLite a dict per row).
_HEARTBEAT_SQL = """
    UPDATE devices SET last_heartbeat = ?,
        seq_gaps = seq_gaps + CASE WHEN last_seq > 0 THEN ? - last_seq - 1 ELSE 0 END,
        last_seq = ?, heartbeats_stored = heartbeats_stored + 1, collected_at = ?,
        cpu_percent = ?, memory_percent = ?, disk_percent = ?, uptime_seconds = ?,
        load1 = ?, load5 = ?, load15 = ?, condition = COALESCE(?, condition),
        reasons = COALESCE(?, reasons), spool_pending = COALESCE(?, spool_pending),
        spool_dropped = COALESCE(?, spool_dropped)
    WHERE device_id = ? AND last_seq < ?
"""
# The same on many rows at once. An UPDATE changes a row at most once however many
# source rows match it, so a document holds at most one heartbeat per device; a
# device's next one goes in the next document (_layers).
_PG_HEARTBEATS_SQL = """
    UPDATE devices AS d SET last_heartbeat = b.received_at,
        seq_gaps = d.seq_gaps + CASE WHEN d.last_seq > 0 THEN b.seq - d.last_seq - 1 ELSE 0 END,
        last_seq = b.seq, heartbeats_stored = d.heartbeats_stored + 1,
        collected_at = b.collected_at, cpu_percent = b.cpu_percent,
        memory_percent = b.memory_percent, disk_percent = b.disk_percent,
        uptime_seconds = b.uptime_seconds, load1 = b.load1, load5 = b.load5,
        load15 = b.load15, condition = COALESCE(b.condition, d.condition),
        reasons = COALESCE(b.reasons, d.reasons),
        spool_pending = COALESCE(b.spool_pending, d.spool_pending),
        spool_dropped = COALESCE(b.spool_dropped, d.spool_dropped)
    FROM (
        SELECT (e->>0)::float8 AS received_at, (e->>1)::bigint AS seq,
            (e->>3)::float8 AS collected_at, (e->>4)::float8 AS cpu_percent,
            (e->>5)::float8 AS memory_percent, (e->>6)::float8 AS disk_percent,
            (e->>7)::float8 AS uptime_seconds, (e->>8)::float8 AS load1,
            (e->>9)::float8 AS load5, (e->>10)::float8 AS load15, e->>11 AS condition,
            e->>12 AS reasons, (e->>13)::bigint AS spool_pending,
            (e->>14)::bigint AS spool_dropped, e->>15 AS device_id
        FROM jsonb_array_elements(?::jsonb) AS e
    ) AS b
    WHERE d.device_id = b.device_id AND d.last_seq < b.seq
"""
_REPORTS_UPSERT = """
    ON CONFLICT (device_id) DO UPDATE SET system_report = excluded.system_report,
        network_report = excluded.network_report, report_at = excluded.report_at,
        report_collected_at = excluded.report_collected_at
    WHERE excluded.report_collected_at > device_reports.report_collected_at
"""
_REPORTS_SQL = f"""
    INSERT INTO device_reports (device_id, system_report, network_report, report_at,
                                report_collected_at)
    VALUES (?, ?, ?, ?, ?) {_REPORTS_UPSERT}
"""
# The reports' bytes travel in hex: JSON has no bytes. One row per device, as above.
_PG_REPORTS_SQL = f"""
    INSERT INTO device_reports (device_id, system_report, network_report, report_at,
                                report_collected_at)
    SELECT e->>0, decode(e->>1, 'hex'), decode(e->>2, 'hex'), (e->>3)::float8,
           (e->>4)::float8
    FROM jsonb_array_elements(?::jsonb) AS e {_REPORTS_UPSERT}
"""
_WIFI_DELETE_SQL = "DELETE FROM device_wifi WHERE device_id = ?"
_PG_WIFI_DELETE_SQL = """
    DELETE FROM device_wifi
    WHERE device_id IN (SELECT e->>0 FROM jsonb_array_elements(?::jsonb) AS e)
"""
_WIFI_UPSERT = (
    "ON CONFLICT (device_id) DO UPDATE SET bssid = excluded.bssid,"
    " signal_dbm = excluded.signal_dbm, seen_at = excluded.seen_at"
)
_WIFI_SQL = f"""
    INSERT INTO device_wifi (device_id, bssid, signal_dbm, seen_at)
    VALUES (?, ?, ?, ?) {_WIFI_UPSERT}
"""
_PG_WIFI_SQL = (
    "INSERT INTO device_wifi (device_id, bssid, signal_dbm, seen_at)"
    " SELECT e->>0, e->>1, (e->>2)::float8, (e->>3)::float8"
    f" FROM jsonb_array_elements(?::jsonb) AS e {_WIFI_UPSERT}"
)
_SEEN_UPSERT = (
    "ON CONFLICT (bssid) DO UPDATE SET seen_at = excluded.seen_at"
    " WHERE excluded.seen_at > bssid_seen.seen_at"
)
_SEEN_SQL = f"INSERT INTO bssid_seen (bssid, seen_at) VALUES (?, ?) {_SEEN_UPSERT}"
_PG_SEEN_SQL = (
    "INSERT INTO bssid_seen (bssid, seen_at) SELECT e->>0, (e->>1)::float8"
    f" FROM jsonb_array_elements(?::jsonb) AS e {_SEEN_UPSERT}"
)
_RESULT_SEQ_SQL = """
    UPDATE devices SET
        seq_gaps = seq_gaps + CASE WHEN last_seq > 0 THEN ? - last_seq - 1 ELSE 0 END,
        last_seq = ?
    WHERE device_id = ? AND last_seq < ?
"""
_RESULT_SQL = """
    INSERT INTO command_results (device_id, seq, command_id, status, message, finished_at,
                                 received_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""

Rows = list[tuple[object, ...]]


def _heartbeat_params(r: HeartbeatRow) -> tuple[object, ...]:
    h, report = r.health, r.report
    verdict: tuple[object, ...] = (None, None, None, None)
    if report is not None:
        verdict = (
            report.condition.value,
            stored_text("\n".join(report.reasons)),
            report.spool_pending,
            report.spool_dropped,
        )
    seq = r.seq
    return (
        r.received_at,
        seq,
        seq,
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
        seq,
    )


def _device(row: HeartbeatRow) -> str:
    return row.device_id


def _is_heartbeat(row: AgentRow) -> bool:
    return isinstance(row, HeartbeatRow)


class _Writes:
    """Runs a statement on rows: SQLite's one per row, or PostgreSQL's on a document."""

    def __init__(self, tx: Tx, *, documents: bool) -> None:
        self.tx = tx
        self.documents = documents

    def rows(self, each: str, document: str, rows: Rows) -> None:
        if not rows:
            return
        if self.documents:
            self.tx.execute(document, (_json_rows(rows),))
        else:
            self.tx.executemany(each, rows)


def store_batch(
    tx: Tx, rows: Sequence[AgentRow], lesson_event: LessonEvent, *, documents: bool
) -> list[StoredLessonEvent]:
    """Stores ``rows`` in order inside ``tx``; the lesson events stored now.
    ``documents``: PostgreSQL's way, a JSON document per statement."""
    if not all(storable_key(r.device_id) for r in rows):
        # No device can have such an id (device_connected refuses it): its rows change
        # nothing on either database, and must not fail the others' on PostgreSQL.
        rows = [r for r in rows if storable_key(r.device_id)]
    writes = _Writes(tx, documents=documents)
    events: list[StoredLessonEvent] = []
    # Every message shares the device's sequence: runs keep the order.
    for is_beat, run in itertools.groupby(rows, _is_heartbeat):
        if is_beat:
            _store_heartbeats(writes, [r for r in run if isinstance(r, HeartbeatRow)])
            continue
        for r in run:
            if isinstance(r, CommandResultRow):
                _store_result(tx, r)
            elif isinstance(r, LessonEventRow):
                stored = lesson_event(tx, r)
                if stored is not None:
                    events.append(stored)
    return events


def _store_heartbeats(writes: _Writes, beats: list[HeartbeatRow]) -> None:
    # On PostgreSQL each document's rows are locked in its order, by device id in every
    # controller: two sharing a device (a move between replicas) wait for each other
    # rather than deadlock, as far as one statement goes.
    parts = [sorted(p, key=_device) for p in _layers(beats)] if writes.documents else [beats]
    for part in parts:
        writes.rows(_HEARTBEAT_SQL, _PG_HEARTBEATS_SQL, [_heartbeat_params(b) for b in part])
        writes.rows(_REPORTS_SQL, _PG_REPORTS_SQL, _reports(part, in_hex=writes.documents))
    _store_wifi(writes, beats)


def _reports(beats: Iterable[HeartbeatRow], *, in_hex: bool) -> Rows:
    return [
        (
            r.device_id,
            r.report.system.hex() if in_hex else r.report.system,
            r.report.network.hex() if in_hex else r.report.network,
            r.received_at,
            r.health.collected_at,
        )
        for r in beats
        if r.report is not None and (r.report.system or r.report.network)
    ]


def _layers(beats: Sequence[HeartbeatRow]) -> list[list[HeartbeatRow]]:
    """``beats`` in lists of one heartbeat per device each, a device's in order: the
    first of every device, then the second of those that have one, and so on."""
    layers: list[list[HeartbeatRow]] = []
    count: dict[str, int] = {}
    for b in beats:
        n = count.get(b.device_id, 0)
        count[b.device_id] = n + 1
        if n == len(layers):
            layers.append([])
        layers[n].append(b)
    return layers


def _json_rows(rows: Rows) -> str:
    try:
        return json.dumps(rows, allow_nan=False, separators=(",", ":"))
    except ValueError:
        # Infinity or NaN, which JSON cannot write (the ingest checks refuse them;
        # should one slip through, it must not refuse the batch): as text, which
        # float8 reads. SQLite keeps a NaN as NULL, PostgreSQL as NaN.
        return json.dumps([[_finite(v) for v in row] for row in rows], separators=(",", ":"))


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _store_wifi(writes: _Writes, beats: Sequence[HeartbeatRow]) -> None:
    """What each full network report says of the Wi-Fi: the device's association
    (or none), and when each BSSID was last seen by any device."""
    full = [b for b in beats if b.report is not None and b.report.network]
    if not full:
        return
    writes.rows(_WIFI_DELETE_SQL, _PG_WIFI_DELETE_SQL, [(b.device_id,) for b in full])
    # Each device's last association in the run (SQLite replaced each with the next).
    associated: dict[str, tuple[object, ...]] = {}
    seen: dict[str, float] = {}
    for b in full:
        wifi = b.report.wifi if b.report else ()
        if wifi and storable_key(wifi[0][0]):
            associated[b.device_id] = (b.device_id, wifi[0][0], wifi[0][1], b.received_at)
        for bssid, _ in wifi:
            if storable_key(bssid):
                seen[bssid] = max(seen.get(bssid, b.received_at), b.received_at)
    writes.rows(_WIFI_SQL, _PG_WIFI_SQL, list(associated.values()))
    # Each BSSID once, in one order: controllers sharing a PostgreSQL database lock these
    # rows (every device near an access point reports it) in the same order, so two
    # batches cannot deadlock on them.
    writes.rows(_SEEN_SQL, _PG_SEEN_SQL, sorted(seen.items()))


def _store_result(tx: Tx, r: CommandResultRow) -> None:
    if tx.execute(_RESULT_SEQ_SQL, (r.seq, r.seq, r.device_id, r.seq)).rowcount:
        tx.execute(
            _RESULT_SQL,
            (
                r.device_id,
                r.seq,
                stored_text(r.command_id),
                stored_text(r.status),
                stored_text(r.message),
                r.finished_at,
                r.received_at,
            ),
        )
