"""The PostgreSQL database: the same schema as SQLite's from the same migrations, the
version check, several controllers migrating at once, URLs libpq takes, errors in
one line."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest

from controller.errors import StoreError
from controller.people import access
from controller.people.sql_store import SqlPeople
from controller.store.database import Database
from controller.store.migrations import LATEST, MIGRATIONS
from controller.store.pg_database import PgDatabase, describe
from controller.store.pg_migrations import translate
from controller.stores import open_stores
from inventory.people import AuditEntry, AuditQuery, Outcome, Role
from tests.pg_cluster import URL_VARIABLE, PgServer, throwaway_cluster
from tests.procs import controller_cli

# SQLite's declared type -> what PostgreSQL's information_schema calls the translation.
_TYPES = {"TEXT": "text", "REAL": "double precision", "INTEGER": "bigint", "BLOB": "bytea"}
Columns = dict[str, list[tuple[str, str, bool, bool]]]


def _sqlite_schema(path: Path) -> tuple[Columns, set[str]]:
    db = sqlite3.connect(path)
    tables = [
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    columns: Columns = {
        t: [
            # SQLite lets a key column other than a rowid be NULL (a bug it keeps for
            # compatibility); PostgreSQL's keys are NOT NULL. No store writes a NULL
            # key, so that difference is taken as none.
            (name, _TYPES[kind], bool(notnull) or pk > 0, pk > 0)
            for _, name, kind, notnull, _default, pk in db.execute(f"PRAGMA table_info({t})")
        ]
        for t in tables
    }
    indexes = {
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    db.close()
    return columns, indexes


def _pg_schema(url: str) -> tuple[Columns, set[str]]:
    with psycopg.connect(url) as conn:
        keys = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT k.table_name, k.column_name FROM information_schema.key_column_usage k "
                "JOIN information_schema.table_constraints c USING (constraint_name) "
                "WHERE c.constraint_type = 'PRIMARY KEY' AND k.table_schema = 'public'"
            )
        }
        columns: Columns = {}
        for table, name, kind, nullable in conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name != 'schoolfleet_schema' ORDER BY table_name, ordinal_position"
        ):
            columns.setdefault(table, []).append(
                (name, kind, nullable == "NO", (table, name) in keys)
            )
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                "AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'"
            )
        }
    return columns, indexes


def test_the_migrations_make_the_same_schema_on_both(tmp_path: Path, pg_url: str) -> None:
    Database(tmp_path / "c.db").close()
    sqlite_columns, sqlite_indexes = _sqlite_schema(tmp_path / "c.db")
    pg_columns, pg_indexes = _pg_schema(pg_url)
    assert pg_columns == sqlite_columns
    assert pg_indexes == sqlite_indexes
    made = sum(m.count("CREATE TABLE") for m in MIGRATIONS)
    assert len(pg_columns) == made and {"maintenance_windows", "leases"} <= set(pg_columns)


def test_an_empty_database_is_migrated_once_by_many_at_once(pg_server: PgServer) -> None:
    url = pg_server.empty_database()
    try:
        opened: list[PgDatabase] = []
        failed: list[BaseException] = []

        def open_one() -> None:
            try:
                opened.append(PgDatabase(url))
            except BaseException as exc:  # reported by the assert below, with its type
                failed.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failed == []
        assert [db.schema_version() for db in opened] == [LATEST] * 4
        for db in opened:
            db.close()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM schoolfleet_schema").fetchone() == (1,)
    finally:
        pg_server.drop(url)


def test_a_newer_schema_is_refused_in_one_line(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE schoolfleet_schema SET version = %s", (LATEST + 1,))
    with pytest.raises(StoreError) as caught:
        open_stores(pg_url)
    assert str(caught.value) == (
        f"database {describe(pg_url)}: schema version {LATEST + 1} is newer than this "
        f"controller knows ({LATEST}); upgrade the controller"
    )


def test_the_url_chooses_the_database(pg_url: str) -> None:
    stores = open_stores(pg_url)
    try:
        assert isinstance(stores.people, SqlPeople)
        assert stores.sql.dialect.name == "postgresql"
        assert stores.name == describe(pg_url) and stores.name.startswith("postgresql://")
        with pytest.raises(StoreError, match=r"is PostgreSQL: it has no SQLite file"):
            _ = stores.database
    finally:
        stores.close()


@pytest.mark.parametrize("connections", [4, 8])
def test_the_pool_holds_at_most_database_connections(pg_url: str, connections: int) -> None:
    """database_connections: what a city sizes max_connections by (docs/scale.md)."""
    stores = open_stores(pg_url, connections)
    database = pg_url.rsplit("/", 1)[1].split("?", 1)[0]
    try:
        # Twelve threads each holding a connection for a moment: the pool grows to its
        # most and the others wait for one.
        threads = [
            threading.Thread(target=stores.sql.read, args=("SELECT pg_sleep(0.3)",))
            for _ in range(12)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        with psycopg.connect(pg_url) as watcher:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()",
                (database,),
            ).fetchone()
        for thread in threads:
            thread.join(10)
        assert row is not None and row[0] == connections
    finally:
        stores.close()


def test_a_multi_host_url_finds_the_writable_server(pg_url: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(pg_url)
    if not params.get("host") or "," in str(params["host"]):
        pytest.skip("SCHOOLFLEET_TEST_PG_URL names no single host to put a dead one before")
    # A host that is not there first: libpq goes on to the next, and keeps the one
    # that takes writes.
    hosts = f"/nonexistent-sf-socket,{params['host']}"
    port = params.get("port")
    url = psycopg.conninfo.make_conninfo(
        pg_url,
        host=hosts,
        port=f"{port},{port}" if port else None,
        target_session_attrs="read-write",
    )
    stores = open_stores(f"postgresql:///?{_as_query(url)}")
    try:
        assert stores.people.list_users() == []
    finally:
        stores.close()


def _as_query(conninfo: str) -> str:
    return urlencode({k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(conninfo).items()})


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    url = "postgresql://sf:s3cret@/nowhere?host=/nonexistent-sf-socket&connect_timeout=1"
    with pytest.raises(StoreError) as caught:
        PgDatabase(url, timeout=1.0)
    message = str(caught.value)
    assert message.startswith(
        "database postgresql://sf@/nonexistent-sf-socket/nowhere: no connection within 1 s ("
    )
    assert "\n" not in message and "s3cret" not in message


@pytest.mark.parametrize(
    ("text", "left"),
    [
        ("INSERT OR REPLACE INTO t VALUES (1);", "OR REPLACE"),
        ("PRAGMA foreign_keys=ON;", "PRAGMA"),
        ("CREATE TABLE t (a TEXT) WITHOUT ROWID;", "WITHOUT ROWID"),
        ("SELECT value FROM json_each('[]');", "json_each"),
    ],
)
def test_a_migration_no_rewrite_carries_is_refused_by_name(text: str, left: str) -> None:
    with pytest.raises(StoreError, match=f"migration 13 uses '{left}', which has no PostgreSQL"):
        translate(13, text)


def test_the_rewrites_leave_identifiers_and_comments_alone() -> None:
    assert translate(
        13,
        "-- INTEGER REAL window\nCREATE TABLE integers (real_value REAL, window TEXT,"
        ' "window2" INTEGER, id INTEGER PRIMARY KEY);',
    ) == (
        '\nCREATE TABLE integers (real_value DOUBLE PRECISION, "window" TEXT,'
        ' "window2" BIGINT, id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);'
    )


def test_the_first_user_is_made_on_postgresql(pg_url: str) -> None:
    made = controller_cli("users", "create", "ops", "--json", "--database", pg_url)
    assert made.code == 0, made.err
    token = json.loads(made.out)["token"]
    stores = open_stores(pg_url)
    try:
        (user,) = stores.people.list_users()
        assert (user.name, user.role) == ("ops", Role.CENTRAL_OPS)
        assert stores.people.find_user(access.hash_token(token)) == user
        (entry,) = stores.people.list_audit(AuditQuery())
        assert (entry.actor, entry.action, entry.target) == (
            "controller-host",
            "users.create",
            "ops",
        )
    finally:
        stores.close()


@pytest.mark.skipif(
    bool(os.environ.get(URL_VARIABLE)), reason="restarts a cluster of its own, not the one given"
)
def test_a_restarted_database_fails_calls_in_one_line_then_serves_them_again() -> None:
    def entry(at: float) -> AuditEntry:
        return AuditEntry(0, at, "ops", "users.list", "", "", Outcome.OK, "m", "local")

    with throwaway_cluster() as cluster:
        db = PgDatabase(cluster.url("postgres"), timeout=2.0)
        try:
            people = SqlPeople(db)
            people.append_audit(entry(1.0))
            cluster.stop()
            started = time.monotonic()
            with pytest.raises(StoreError) as caught:
                people.append_audit(entry(2.0))
            assert time.monotonic() - started < 5.0, "bounded by the pool's timeout"
            assert str(caught.value).startswith(f"database {db.name}: ")
            assert "\n" not in str(caught.value)
            cluster.start()
            people.append_audit(entry(3.0))
            assert [e.at for e in people.list_audit(AuditQuery())] == [3.0, 1.0]
        finally:
            db.close()


def test_device_rows_leave_room_for_their_next_version(pg_url: str) -> None:
    # Heartbeats rewrite these rows all day: half of each page free keeps the updates
    # beside the rows (HOT), with no new index entries.
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT relname, reloptions FROM pg_class "
            "WHERE relname IN ('devices', 'device_reports', 'audit') ORDER BY relname"
        ).fetchall()
    assert rows == [
        ("audit", None),
        ("device_reports", ["fillfactor=50"]),
        ("devices", ["fillfactor=50"]),
    ]
