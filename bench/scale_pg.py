"""The PostgreSQL server of the scale-out benchmark: a throwaway cluster (tests/pg_cluster.py)
made durable as a city would run it, a fresh migrated database per run, and the CPU
time of the server's processes.

The test cluster runs with ``fsync``, ``synchronous_commit`` and ``full_page_writes``
off; here all three are turned on again (each takes a reload), so a commit waits for
its WAL flush on this machine's disk, as acked heartbeats must. ``durable=False``
keeps the test cluster's settings, for comparison.

The server's CPU is read by pid, never by name (other sessions run their own
PostgreSQL on this machine): the postmaster's pid from its ``postmaster.pid``, its
children from their parent pid in ``/proc``, and the children that have exited from
the postmaster's own account of them (``cutime``/``cstime``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg import sql

from bench.entry import load_average
from controller.store.pg_database import PgDatabase
from tests.pg_cluster import Cluster, PgServer, throwaway_cluster

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TEMPLATE = "sf_scale_template"
T = TypeVar("T")
# What a city's server keeps on; the test cluster turns them off for speed.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of one /proc/PID/stat line the benchmark reads."""

    pid: int
    ppid: int
    # user + system CPU seconds of the process itself, and of its waited-for children.
    own: float
    children: float


def parse_stat(line: str) -> ProcStat:
    """One /proc/PID/stat line; the command name may hold spaces and parentheses."""
    head, _, tail = line.rpartition(")")
    fields = tail.split()
    pid = int(head.split("(", 1)[0])
    ticks = [int(f) for f in fields[11:15]]
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        own=(ticks[0] + ticks[1]) / _CLOCK_TICKS,
        children=(ticks[2] + ticks[3]) / _CLOCK_TICKS,
    )


def tree_cpu(root: int, stats: list[ProcStat]) -> float:
    """CPU seconds of ``root`` and its children so far: its own, the children alive
    now, and those that have exited (counted in ``root``'s children's time once it
    has waited for them, which the postmaster does at once). A child that exits
    between two readings moves its time from the live sum to the waited one, so a
    difference of two readings counts it once."""
    total = 0.0
    for stat in stats:
        if stat.pid == root:
            total += stat.own + stat.children
        elif stat.ppid == root:
            total += stat.own
    return total


def subtree_cpu(root: int, stats: list[ProcStat]) -> float:
    """CPU seconds of ``root`` and every process under it, however deep (a controller,
    its wave workers, their zygotes, Ansible and ssh): each live one's own time and the
    time of the children it has waited for. As with ``tree_cpu``, a process that exits
    and is waited for between two readings moves its time to its parent's account and
    is counted once; one whose parent dies first (re-parented) is lost to the tree."""
    under: dict[int, list[ProcStat]] = {}
    for stat in stats:
        under.setdefault(stat.ppid, []).append(stat)
    total, todo = 0.0, [s for s in stats if s.pid == root]
    while todo:
        stat = todo.pop()
        total += stat.own + stat.children
        todo += under.get(stat.pid, [])
    return total


def read_stats() -> list[ProcStat]:
    """Every process's /proc/PID/stat that can still be read."""
    stats = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            line = Path(f"/proc/{entry.name}/stat").read_text(encoding="ascii", errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone between the listing and the read
        stats.append(parse_stat(line))
    return stats


@dataclass(frozen=True, slots=True)
class WalActivity:
    """Counters of the server's disk work: WAL bytes written, WAL flushes (fsyncs), and
    transactions committed in one database."""

    wal_bytes: float
    wal_syncs: int
    commits: int


@dataclass
class BenchPg:
    """The benchmark's server: its cluster and a migrated template to copy."""

    cluster: Cluster
    server: PgServer
    durable: bool

    @property
    def postmaster_pid(self) -> int:
        # The first line of postmaster.pid is the server's pid (PostgreSQL's own record).
        return int((self.cluster.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def cpu_seconds(self) -> float:
        """CPU seconds the server's processes have used so far."""
        return tree_cpu(self.postmaster_pid, read_stats())

    def fresh_database(self) -> str:
        """A new database copied from the migrated template; its URL."""
        return self.server.fresh_database()

    def drop(self, url: str) -> None:
        self.server.drop(url)

    def backends(self, url: str) -> int:
        """Client connections to ``url``'s database now (ours not counted)."""
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ).fetchone()
        return int(row[0]) if row else 0

    def activity(self, url: str) -> WalActivity:
        """The server's WAL written and flushed so far, and ``url``'s database's commits.
        (PostgreSQL's statistics lag by up to a second; windows are tens of seconds.)"""
        with psycopg.connect(url, autocommit=True) as conn:
            wal = conn.execute("SELECT wal_bytes, wal_sync FROM pg_stat_wal").fetchone()
            commits = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        if wal is None or commits is None:
            return WalActivity(0.0, 0, 0)
        return WalActivity(float(wal[0]), int(wal[1]), int(commits[0]))

    def setting(self, name: str) -> str:
        with psycopg.connect(self.server.admin_url, autocommit=True) as conn:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
        return str(row[0]) if row else ""

    def version(self) -> str:
        with psycopg.connect(self.server.admin_url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "unknown"


def _make_durable(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name, value in DURABLE.items():
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        conn.execute("SELECT pg_reload_conf()")


@contextlib.contextmanager
def bench_server(durable: bool = True) -> Iterator[BenchPg]:
    """A throwaway cluster with a migrated template; stopped and removed after."""
    with throwaway_cluster() as cluster:
        admin = cluster.url("postgres")
        if durable:
            _make_durable(admin)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        # Migrated once; CREATE DATABASE ... TEMPLATE needs nobody connected to it.
        PgDatabase(cluster.url(TEMPLATE)).close()
        yield BenchPg(cluster, PgServer(admin, cluster.url, TEMPLATE), durable)


def on_bench_server(durable: bool, body: Callable[[BenchPg], T]) -> tuple[T, dict[str, str]]:
    """Runs ``body`` on a fresh ``bench_server``; what it returned, and for the record
    PostgreSQL's version, the load average before and after, and the minutes it took."""
    started, load_before = time.monotonic(), load_average()
    with bench_server(durable) as pg:
        version = pg.version()
        found = body(pg)
    return found, {
        "pg_version": version,
        "load_before": load_before,
        "load_after": load_average(),
        "minutes": f"{(time.monotonic() - started) / 60:.1f}",
    }
