"""The devices' batch on PostgreSQL at a district's and at a city's table size: the time
and the server's CPU per batch of heartbeats, and the plan of its UPDATE.

For each size (``--devices``, 9,000 and 130,000), a fresh database of
bench/scale_pg.py's durable cluster (fsync and synchronous_commit on) gets that many
devices through ``device_connected``, is vacuumed and analysed, and then stores
``--batches`` batches of 7, 50 and 500 heartbeats through ``record_messages``, each
batch's devices spread over the whole table (as a replica's streams are), one in ten
heartbeats with full reports (bench/store_ingest.py's rows). A replica's writer
commits at most one batch per ``flush_interval`` (50 ms): at a city's 30 s interval a
replica's batches are small, so the cost per batch matters as much as the cost per
row. The server's CPU is its processes' (bench/scale_pg.py ``cpu_seconds``).

Run from the repository: ``.venv/bin/python bench/pg_batches.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import statistics
import time

import psycopg

from bench import store_ingest as rows
from bench.scale_pg import BenchPg, bench_server
from controller.fleet import sql_batch
from controller.store.pg_database import PgDatabase
from controller.store.sql import pg_text
from controller.stores import stores_on

SIZES = (7, 50, 500)


def _plan(url: str, devices: int) -> str:
    """How PostgreSQL joins a batch of 7 to the devices' table."""
    # The document's columns, as sql_batch lays them out: received_at, seq, then the
    # health figures, the verdict, and the device last.
    health = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.1, 0.2, 0.3, "ok", "", 0, 0]
    document = json.dumps(
        [[rows.T0, 10**6 + i, *health, f"d{(i * 97) % devices:05d}"] for i in range(7)]
    )
    query = "EXPLAIN " + pg_text(sql_batch._PG_HEARTBEATS_SQL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        lines = [str(r[0]) for r in conn.execute(query, (document,))]
        conn.execute("ROLLBACK")
    picked = [line.strip().split("  (")[0].lstrip("-> ") for line in lines]
    return "; ".join(p for p in picked if "Scan" in p or "Join" in p or "Loop" in p)


def measure(pg: BenchPg, devices: int, batches: int) -> list[str]:
    """One table size: its lines of the record."""
    url = pg.fresh_database()
    db = PgDatabase(url)
    try:
        stores = stores_on(db)
        started = time.monotonic()
        for n in range(devices):
            stores.devices.device_connected(rows._identity(n), n + 1, 90.0, rows.T0)
        made = time.monotonic() - started
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            size = conn.execute(
                "SELECT pg_total_relation_size('devices') + pg_total_relation_size"
                "('device_reports') + pg_total_relation_size('device_wifi')"
            ).fetchone()
        lines = [
            f"| {devices:,} | `device_connected` one by one: {1000 * made / devices:.2f} ms "
            f"each | plan of a batch of 7: {_plan(url, devices)} | | |"
        ]
        seq = 1
        for size_ in SIZES:
            step = max(1, devices // size_)
            took, cpu_before = [], pg.cpu_seconds()
            for k in range(batches):
                batch = [
                    rows._beat((i * step + k) % devices, seq, rows.T0 + seq) for i in range(size_)
                ]
                seq += 1
                at = time.perf_counter()
                stores.devices.record_messages(batch)
                took.append(time.perf_counter() - at)
            cpu = (pg.cpu_seconds() - cpu_before) / batches
            lines.append(
                f"| {devices:,} | batch of {size_} | {1000 * statistics.median(took):.2f} ms "
                f"| {1000 * cpu:.2f} ms | {1e6 * cpu / size_:.0f} µs |"
            )
        stored = size[0] if size else 0
        lines.append(
            f"| {devices:,} | devices, reports and Wi-Fi tables after the heartbeats | "
            f"{stored / devices:,.0f} bytes per device | | |"
        )
        return lines
    finally:
        db.close()
        pg.drop(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[9000, 130_000])
    parser.add_argument("--batches", type=int, default=40, help="batches of each size")
    args = parser.parse_args()
    lines = [
        "| devices | batch | median time per batch (commit included) | PostgreSQL CPU "
        "per batch | PostgreSQL CPU per heartbeat |",
        "|---|---|---|---|---|",
    ]
    with bench_server(durable=True) as pg:
        for devices in args.devices:
            lines += measure(pg, devices, args.batches)
            print(f"{devices} devices measured", file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
