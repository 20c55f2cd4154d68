"""What a feature's store may ask of its database, the same on SQLite and PostgreSQL,
so that each store is written once.

A store writes its statements in SQLite's notation: ``:name`` and ``?`` for bound
values, ``ON CONFLICT ... DO NOTHING/UPDATE`` for upserts, ``RETURNING`` for a new
key (both databases take these as they are). PostgreSQL's database rewrites the
placeholders to psycopg's (``pg_text``), once per statement. Where the two truly
differ, the store asks the database's ``Dialect``: testing a value against a bound
list, reading the pairs of a JSON object, ordering text by code point. Rows are read
by column name only.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from controller.errors import StoreError

Params = Mapping[str, Any] | Sequence[Any]


class Row(Protocol):
    """One row of a result, read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


class Cursor(Protocol):
    """What a statement answers."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


class Tx(Protocol):
    """A connection inside a transaction."""

    def execute(self, sql: str, params: Params = ..., /) -> Cursor: ...

    def executemany(self, sql: str, params: Iterable[Params], /) -> object: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the databases in a statement's text."""

    name: str
    # The condition that ``column`` is one of the list bound at ``mark``.
    one_of: Callable[[str, str], str]
    # The list as that condition binds it.
    listed: Callable[[Iterable[Any]], object]
    # A table of (key, value) text pairs from the JSON object in ``expression``.
    json_pairs: Callable[[str], str]
    # ``expression`` ordered by code point, as SQLite orders text, whatever the
    # PostgreSQL database's locale.
    by_code_point: Callable[[str], str]
    # Appended to a SELECT inside a transaction to lock the rows it reads until the
    # transaction ends. SQLite has no row locks and needs none: its one writer holds
    # the database's write lock for the whole transaction.
    for_update: str
    # Appended to a SELECT inside a transaction to lock the rows it reads, leaving out
    # any another transaction holds (a queue's items taken by several controllers at
    # once, each a different one). SQLite's one writer takes them one at a time.
    skip_locked: str
    # The database's clock in seconds since the epoch: what replicas whose own clocks
    # differ agree on.
    now_seconds: str


SQLITE = Dialect(
    name="sqlite",
    # SQLite has no arrays: the list is bound as one JSON text.
    one_of=lambda column, mark: f"{column} IN (SELECT value FROM json_each({mark}))",
    listed=lambda values: json.dumps(list(values)),
    json_pairs=lambda expression: f"json_each({expression})",
    by_code_point=lambda expression: expression,
    for_update="",
    skip_locked="",
    now_seconds="((julianday('now') - 2440587.5) * 86400.0)",
)

POSTGRESQL = Dialect(
    name="postgresql",
    one_of=lambda column, mark: f"{column} = ANY({mark})",
    listed=list,
    json_pairs=lambda expression: f"jsonb_each_text(({expression})::jsonb)",
    by_code_point=lambda expression: f'{expression} COLLATE "C"',
    for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    now_seconds="extract(epoch FROM clock_timestamp())::float8",
)


class SqlDatabase(Protocol):
    """One database every feature's store shares (controller/store/database.py for
    SQLite, pg_database.py for PostgreSQL)."""

    @property
    def name(self) -> str:
        """What messages call it (never a password)."""
        ...

    @property
    def dialect(self) -> Dialect: ...

    def read(self, sql: str, params: Params = ...) -> Sequence[Any]:
        """The rows of one query."""
        ...

    def write(self, sql: str, params: Params = ...) -> int:
        """One statement in its own transaction; the rows it touched."""
        ...

    def write_many(self, sql: str, params: Sequence[Params]) -> None:
        """One statement per parameter set, all in one transaction."""
        ...

    def transaction(self) -> AbstractContextManager[Tx]:
        """A connection inside a transaction, committed when the block ends; any
        exception rolls everything back, and the database's errors come out as
        StoreErrors. On SQLite the block holds the one writer's lock."""
        ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


# A token of a statement: a quoted literal or identifier (left as it is), a named or
# positional placeholder, or a percent sign (doubled for psycopg).
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?<![:\w]):(\w+)|\?(\d*)|%")


@functools.lru_cache(maxsize=1024)
def pg_text(sql: str) -> str:
    """A statement in SQLite's notation with psycopg's placeholders: ``:name`` ->
    ``%(name)s``, ``?`` -> ``%s``, ``%`` -> ``%%``; quoted text is left alone.
    Numbered placeholders (``?3``) have no psycopg form and are refused."""

    def swap(m: re.Match[str]) -> str:
        text = m.group(0)
        if m.group(1) is not None:
            return f"%({m.group(1)})s"
        if text.startswith("?"):
            if m.group(2):
                raise StoreError(f"statement uses numbered placeholder {text}: name it instead")
            return "%s"
        if text == "%":
            return "%%"
        return text

    return _TOKEN.sub(swap, sql)
