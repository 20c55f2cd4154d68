"""The devices' store alone: heartbeats stored per second through
``SqlDevices.record_messages``, on a SQLite file and on PostgreSQL.

5,000 enrolled devices; each run stores ``--batches`` batches of 500 heartbeats (the
writer's largest batch), each device's seq going on by one, every heartbeat with its
verdict and one in ten with full reports and a Wi-Fi association (the agent's
rhythm). The figure is the median of ``--runs`` runs' heartbeats/s, each run on the
database the previous one left (the rows are updated in place, as in service).

SQLite is a file in a new temporary folder, ``synchronous=FULL`` as the controller
keeps it. PostgreSQL is a throwaway cluster (tests/pg_cluster.py: a Unix socket,
``fsync`` and ``synchronous_commit`` off), or the server ``--pg-url`` names (a role
that may create databases): a commit there costs no disk flush, so its figure is
the statements' cost, not the durability's.

Run from the repository: ``.venv/bin/python bench/store_ingest.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql

from controller.store.database import Database
from controller.store.pg_database import PgDatabase
from controller.store.rows import HeartbeatRow
from controller.store.sql import SqlDatabase
from controller.stores import stores_on
from inventory.model import Condition, DeviceIdentity, DeviceKind, DeviceReport, Health, OsInfo
from tests.pg_cluster import throwaway_cluster, with_database

DEVICES = 5_000
BATCH = 500
T0 = 1_800_000_000.0
_SYSTEM = bytes(range(256)) * 4
_NETWORK = bytes(range(255, -1, -1)) * 2


def _identity(n: int) -> DeviceIdentity:
    return DeviceIdentity(
        f"d{n:05d}",
        DeviceKind.PANEL if n % 3 else DeviceKind.LAPTOP,
        f"s{n % 50:02d}",
        f"r{n % 20:02d}",
        f"host-{n}",
        "0.9.1",
        OsInfo("Debian GNU/Linux", "12.5", "6.1.0-18-amd64", T0),
        address=f"10.{n // 250}.{n % 250}.1",
        labels=(("grade", str(5 + n % 3)),),
    )


def _beat(n: int, seq: int, at: float) -> HeartbeatRow:
    device = f"d{n:05d}"
    health = Health(at, 12.5, 40.25, 61.0, 3600.0 + seq, 0.5, 0.4, 0.3)
    full = seq % 10 == n % 10
    report = DeviceReport(
        Condition.OK if n % 7 else Condition.DEGRADED,
        () if n % 7 else ("disk / at 93%",),
        _SYSTEM if full else b"",
        _NETWORK if full else b"",
        spool_pending=0,
        spool_dropped=0,
        wifi=((f"aa:bb:cc:00:{n % 40:02x}:01", -60.0),) if full else (),
    )
    return HeartbeatRow(device, seq, at, health, report)


def _batches(first_seq: int, count: int) -> list[list[HeartbeatRow]]:
    """``count`` batches of BATCH heartbeats, the devices in turn, seqs from first_seq."""
    rows = []
    for i in range(count * BATCH):
        n, lap = i % DEVICES, i // DEVICES
        rows.append(_beat(n, first_seq + lap, T0 + first_seq + lap))
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


def _measure(db: SqlDatabase, batches: int, runs: int) -> tuple[float, list[float]]:
    stores = stores_on(db)
    for n in range(DEVICES):
        stores.devices.device_connected(_identity(n), n + 1, 90.0, T0)
    laps = batches * BATCH // DEVICES + 1
    rates = []
    for run in range(runs):
        # Made before the clock starts: the figure is the store's, not the rows'.
        work = _batches(1 + run * laps, batches)
        started = time.perf_counter()
        for batch in work:
            stores.devices.record_messages(batch)
        rates.append(batches * BATCH / (time.perf_counter() - started))
    # Every heartbeat was new: nothing counted as a replay or a gap.
    stored = db.read("SELECT SUM(heartbeats_stored) AS n, SUM(seq_gaps) AS g FROM devices")[0]
    if int(stored["n"]) != runs * batches * BATCH:
        raise SystemExit(f"stored {stored['n']} heartbeats, expected {runs * batches * BATCH}")
    return statistics.median(rates), rates


@contextlib.contextmanager
def _pg_url(given: str | None) -> Iterator[str]:
    """A new database's URL on ``given``'s server or a throwaway cluster's."""
    if given:
        with _database(given, lambda name: with_database(given, name)) as url:
            yield url
        return
    with throwaway_cluster() as cluster, _database(cluster.url("postgres"), cluster.url) as url:
        yield url


@contextlib.contextmanager
def _database(admin_url: str, url_of: Callable[[str], str]) -> Iterator[str]:
    name = f"sf_bench_store_{int(time.time())}"
    ident = sql.Identifier(name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield url_of(name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40, help="batches of 500 per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--pg-url", default=None, help="a server to use instead of a cluster")
    args = parser.parse_args()
    results: list[tuple[str, float, list[float]]] = []
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="sf-bench-") as folder:
            db = Database(Path(folder) / "c.db")
            try:
                results.append(("SQLite file", *_measure(db, args.batches, args.runs)))
            finally:
                db.close()
    if args.only in (None, "postgresql"):
        with _pg_url(args.pg_url) as url:
            pg = PgDatabase(url)
            try:
                results.append(("PostgreSQL", *_measure(pg, args.batches, args.runs)))
            finally:
                pg.close()
    print(f"{DEVICES} devices, {args.runs} runs of {args.batches} batches of {BATCH} heartbeats")
    for name, median, rates in results:
        each = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{name}: {median:,.0f} heartbeats/s (median; runs {each})")


if __name__ == "__main__":
    main()
