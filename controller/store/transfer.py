"""Moving a district up: every table of a SQLite store copied into an empty
PostgreSQL database in one transaction, the counts checked before it commits.

Both sides are at the same schema (each is migrated to this controller's version when
opened), so a table is copied column by column by name. The source is read in one
snapshot; the target's tables are locked for the copy, so a replica started early
cannot write between the emptiness check and the commit. A NUL in text, which
PostgreSQL's text cannot hold, is written as the four characters ``\\x00`` (what the
stores do with one arriving now) and counted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from controller.errors import StoreError
from controller.store.database import Database
from controller.store.pg_database import PgDatabase, PgTx

# Rows fetched from SQLite at a time: memory stays flat whatever the table's size.
_FETCH = 2000
_SCHEMA_TABLE = "schoolfleet_schema"


@dataclass(frozen=True, slots=True)
class TableCopied:
    name: str
    rows: int


@dataclass(frozen=True, slots=True)
class Transfer:
    """What ``transfer`` copied: every table's rows, equal on both sides."""

    source: str
    target: str
    schema_version: int
    tables: tuple[TableCopied, ...]
    nuls_written_out: int
    seconds: float

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "target": self.target,
            "schema_version": self.schema_version,
            "tables": {t.name: t.rows for t in self.tables},
            "rows": self.rows,
            "nuls_written_out": self.nuls_written_out,
            "seconds": round(self.seconds, 3),
        }


def transfer(source: Path, target_url: str) -> Transfer:
    """Copies the SQLite store at ``source`` into the empty PostgreSQL database at
    ``target_url``; StoreError in one line if anything would not match."""
    if not source.is_file():
        raise StoreError(f"database {source}: no such file")
    started = time.monotonic()
    src = Database(source)
    try:
        dst = PgDatabase(target_url)
        try:
            return _copy(src, dst, started)
        finally:
            dst.close()
    finally:
        src.close()


def _copy(src: Database, dst: PgDatabase, started: float) -> Transfer:
    version = src.schema_version()
    if dst.schema_version() != version:
        raise StoreError(
            f"database {dst.name} is at schema {dst.schema_version()}, "
            f"{src.name} at {version}: both must be at this controller's"
        )
    # One snapshot of the source for the whole copy.
    reader = src.reader()
    reader.execute("BEGIN")
    try:
        tables = _sqlite_tables(reader)
        with dst.transaction() as tx:
            _check_target(tx, dst.name, tables)
            nuls = 0
            copied: list[TableCopied] = []
            for table, columns in tables.items():
                rows, written = _copy_table(reader, tx, table, columns)
                nuls += written
                copied.append(TableCopied(table, rows))
            _check_counts(reader, tx, dst.name, copied)
            _advance_identities(tx, tables)
    finally:
        reader.execute("COMMIT")
    return Transfer(
        source=src.name,
        target=dst.name,
        schema_version=version,
        tables=tuple(copied),
        nuls_written_out=nuls,
        seconds=time.monotonic() - started,
    )


def _sqlite_tables(reader: sqlite3.Connection) -> dict[str, list[str]]:
    names = [
        r["name"]
        for r in reader.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {
        name: [c["name"] for c in reader.execute("SELECT name FROM pragma_table_info(?)", (name,))]
        for name in names
    }


def _shown(name: str) -> str:
    """A table's name as a one-line message shows it: quoted and escaped unless it is
    a plain name (a hostile file may name a table anything)."""
    return name if name.isidentifier() and name.isascii() else repr(name)


def _pg_columns(tx: PgTx) -> dict[str, set[str]]:
    columns: dict[str, set[str]] = {}
    for r in tx.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name != ?",
        (_SCHEMA_TABLE,),
    ).fetchall():
        columns.setdefault(r["table_name"], set()).add(r["column_name"])
    return columns


def _check_target(tx: PgTx, target: str, tables: dict[str, list[str]]) -> None:
    theirs = _pg_columns(tx)
    for table, columns in tables.items():
        if theirs.get(table) != set(columns):
            raise StoreError(
                f"database {target}: table {_shown(table)} differs from the SQLite store's; "
                "both must be at this controller's schema"
            )
    for table in tables:
        # Until the copy commits, nothing else writes into these tables.
        tx.conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(table)))
        row = tx.conn.execute(
            sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table))
        ).fetchone()
        if row is not None and row["n"]:
            raise StoreError(
                f"database {target} is not empty (table {table} has {row['n']} rows); "
                "move into a new database"
            )


def _written_out(value: object) -> tuple[object, int]:
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\\x00"), 1
    return value, 0


def _source_rows(
    reader: sqlite3.Connection, table: str, columns: list[str]
) -> Iterator[sqlite3.Row]:
    quoted = ", ".join(f'"{c}"' for c in columns)
    cursor = reader.execute(f'SELECT {quoted} FROM "{table}"')
    while batch := cursor.fetchmany(_FETCH):
        yield from batch


def _copy_table(
    reader: sqlite3.Connection, tx: PgTx, table: str, columns: list[str]
) -> tuple[int, int]:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    rows = nuls = 0
    with tx.conn.cursor() as cur, cur.copy(statement) as copy:
        for row in _source_rows(reader, table, columns):
            values = []
            for value in row:
                kept, written = _written_out(value)
                values.append(kept)
                nuls += written
            copy.write_row(values)
            rows += 1
    return rows, nuls


def _check_counts(
    reader: sqlite3.Connection, tx: PgTx, target: str, copied: list[TableCopied]
) -> None:
    for table in copied:
        there = tx.conn.execute(
            sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table.name))
        ).fetchone()
        here = reader.execute(f'SELECT count(*) FROM "{table.name}"').fetchone()[0]
        if there is None or there["n"] != here or here != table.rows:
            raise StoreError(
                f"database {target}: table {table.name} has {there and there['n']} rows "
                f"after the copy, the SQLite store {here}; nothing was kept"
            )


def _advance_identities(tx: PgTx, tables: dict[str, list[str]]) -> None:
    # Copied rows carry their keys; a key PostgreSQL assigns next must not repeat one.
    for r in tx.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall():
        if r["table_name"] not in tables:
            continue
        table, column = sql.Identifier(r["table_name"]), sql.Identifier(r["column_name"])
        tx.conn.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence(%s, %s), "
                "COALESCE((SELECT max({}) FROM {}), 0) + 1, false)"
            ).format(column, table),
            (r["table_name"], r["column_name"]),
        )
