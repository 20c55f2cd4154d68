"""`schoolfleet-controller store migrate`: a district's SQLite store copied into
PostgreSQL, every table and every value, the counts checked; refusals in one line."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from controller.datadir import lock as data_lock
from controller.store.database import Database
from controller.store.pg_database import describe
from controller.stores import open_stores
from inventory.people import AuditEntry, AuditQuery, Outcome
from tests.procs import Result, controller_cli

ROWS = 3
HOSTILE = 'it\'s "q" ; DROP TABLE users; -- ünï 🎒 '


def _value(kind: str, table: str, column: str, i: int) -> Any:
    if "INT" in kind:
        return 2**40 + 7 * i
    if kind == "REAL":
        return i + 0.123456789012345
    if kind == "BLOB":
        return bytes([0, 1, 255, i])
    text = f"{HOSTILE}{table}.{column} {i}"
    # The middle row carries a NUL, which PostgreSQL's text cannot hold.
    return text + "\x00end" if i == 1 else text


def _fill_every_table(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Three rows in every table of a migrated SQLite store, typed by their columns,
    the last row's nullable columns NULL; what each table holds, as written."""
    Database(path).close()
    conn = sqlite3.connect(path)
    written: dict[str, list[tuple[Any, ...]]] = {}
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    for table in tables:
        columns = conn.execute(
            'SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (table,)
        ).fetchall()
        rows = []
        for i in range(ROWS):
            row = tuple(
                None if i == ROWS - 1 and not notnull and not pk else _value(kind, table, name, i)
                for name, kind, notnull, pk in columns
            )
            rows.append(row)
        names = ", ".join(f'"{c[0]}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        conn.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', rows)
        written[table] = rows
    conn.commit()
    conn.close()
    return written


def _migrate(source: Path, pg_url: str, data: Path, *more: str) -> Result:
    source_url = f"sqlite:{source}"
    return controller_cli(
        "store", "migrate", "--from", source_url, "--to", pg_url, "--data-dir", str(data), *more
    )


def _columns(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM pragma_table_info(?)", (table,))]


def test_every_table_and_value_is_copied_and_the_counts_checked(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "district.db"
    written = _fill_every_table(source)
    moved = _migrate(source, pg_url, tmp_path / "data", "--json")
    assert moved.code == 0, moved.err
    report = json.loads(moved.out)
    assert report["tables"] == {table: ROWS for table in written}
    assert report["rows"] == ROWS * len(written)
    assert report["nuls_written_out"] == sum(
        1 for rows in written.values() for v in rows[1] if isinstance(v, str)
    )
    assert report["target"] == describe(pg_url)
    for table, rows in written.items():
        columns = _columns(source, table)
        # psycopg reads the rows in PostgreSQL's column order; put them in SQLite's.
        with psycopg.connect(pg_url) as conn:
            got = conn.execute(
                sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
                )
            ).fetchall()
        expected = [
            tuple(v.replace("\x00", "\\x00") if isinstance(v, str) else v for v in row)
            for row in rows
        ]
        assert sorted(map(repr, got)) == sorted(map(repr, expected)), table


def test_the_moved_store_serves_on_and_assigns_new_keys_after_the_copied_ones(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "district.db"
    stores = open_stores(f"sqlite:{source}")
    try:
        for n in range(5):
            stores.people.append_audit(
                AuditEntry(0, 1000.0 + n, "ops", "users.create", f"u{n}", "", Outcome.OK, "", "")
            )
        before = stores.people.list_audit(AuditQuery())
    finally:
        stores.close()
    moved = _migrate(source, pg_url, tmp_path / "data")
    assert moved.code == 0, moved.err
    assert moved.out.splitlines()[-1].startswith(
        f"copied 5 rows in {len(_columns_of_all(source))} tables from {source} to "
        f"{describe(pg_url)} in "
    )
    assert moved.out.splitlines()[-1].endswith(f"(schema {_version(source)}); every count matches")
    assert "audit                           5" in moved.out
    pg = open_stores(pg_url)
    try:
        assert pg.people.list_audit(AuditQuery()) == before
        pg.people.append_audit(
            AuditEntry(0, 2000.0, "ops", "users.revoke", "u0", "", Outcome.OK, "", "")
        )
        assert [e.entry_id for e in pg.people.list_audit(AuditQuery(limit=2))] == [6, 5]
    finally:
        pg.close()


def _columns_of_all(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]


def _version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_a_database_that_is_not_empty_is_refused_and_left_as_it_was(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "district.db"
    _fill_every_table(source)
    data = ["--data-dir", str(tmp_path / "data")]
    first = controller_cli("store", "migrate", "--from", f"sqlite:{source}", "--to", pg_url, *data)
    assert first.code == 0, first.err
    again = controller_cli("store", "migrate", "--from", f"sqlite:{source}", "--to", pg_url, *data)
    assert again.code == 2
    assert again.out == ""
    assert again.err.startswith(
        f"schoolfleet-controller: database {describe(pg_url)} is not empty (table "
    )
    assert again.err.endswith(" has 3 rows); move into a new database\n")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (ROWS,)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--from", "sqlite:{tmp}/absent.db", "--to", "{pg}"],
            "database {tmp}/absent.db: no such file",
        ),
        (
            ["--from", "sqlite:{tmp}/absent.db", "--to", "sqlite:{tmp}/b.db"],
            "--to 'sqlite:{tmp}/b.db': expected a postgresql:// URL",
        ),
        (
            ["--from", "mysql://x/y", "--to", "{pg}"],
            "database 'mysql://x/y': unsupported URL (expected sqlite:///PATH)",
        ),
    ],
)
def test_a_mistake_is_one_line(tmp_path: Path, pg_url: str, args: list[str], message: str) -> None:
    filled = [a.format(tmp=tmp_path, pg=pg_url) for a in args]
    done = controller_cli("store", "migrate", *filled, "--data-dir", str(tmp_path / "data"))
    assert (done.code, done.out) == (2, "")
    assert done.err == f"schoolfleet-controller: {message.format(tmp=tmp_path)}\n"


def test_a_running_controllers_folder_is_refused(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "district.db"
    Database(source).close()
    data = tmp_path / "data"
    data.mkdir()
    held = data_lock.hold(data)  # as a serving controller holds it
    try:
        done = _migrate(source, pg_url, data)
    finally:
        os.close(held)
    assert done.code == 2
    assert done.err == (
        f"schoolfleet-controller: data_dir {data}: another controller is running on it "
        "(lock controller.lock)\n"
    )


def test_migrate_explains_itself() -> None:
    shown = controller_cli("store", "migrate", "--help")
    assert shown.code == 0
    assert "Copy every table of a SQLite store into an empty PostgreSQL" in shown.out
    assert "--from" in shown.out and "--to" in shown.out and "--json" in shown.out


@pytest.mark.parametrize(
    "ddl",
    [
        'CREATE TABLE "x""; DROP TABLE users; --\nsecond line" (a TEXT)',
        'ALTER TABLE users ADD COLUMN "name"" FROM users; DROP TABLE audit; --" TEXT',
    ],
)
def test_a_hostile_source_file_is_refused_before_any_of_its_names_is_read(
    tmp_path: Path, pg_url: str, ddl: str
) -> None:
    source = tmp_path / "district.db"
    _fill_every_table(source)
    with sqlite3.connect(source) as conn:
        conn.execute(ddl)
    done = _migrate(source, pg_url, tmp_path / "data")
    assert (done.code, done.out) == (2, "")
    assert done.err.count("\n") == 1, done.err
    assert done.err.startswith(f"schoolfleet-controller: database {describe(pg_url)}: table ")
    assert done.err.endswith(
        " differs from the SQLite store's; both must be at this controller's schema\n"
    )
    # Nothing was read from the odd names, nothing written, nothing dropped.
    with psycopg.connect(pg_url) as conn:
        for table in ("users", "audit"):
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            assert conn.execute(query).fetchone() == (0,)
