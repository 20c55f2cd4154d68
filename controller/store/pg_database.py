"""The PostgreSQL database every feature's PostgreSQL store shares: a pool of
connections, the numbered migrations, errors as ours.

The URL goes to libpq as it is, so whatever libpq takes works, a multi-host URL with
``target_session_attrs=read-write`` included: after a primary's failover the pool's
check on every checkout drops connections to the old one and libpq finds the new.
Unlike the SQLite file there is no write lock here: PostgreSQL orders concurrent
writers itself, and several controllers may share it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from controller.errors import StoreError, StoreUnavailable
from controller.store.migrations import LATEST
from controller.store.pg_migrations import postgres_sql
from controller.store.sql import POSTGRESQL, Dialect, Params, pg_text

log = logging.getLogger(__name__)

Connection = psycopg.Connection[DictRow]

# Any number for pg_advisory_xact_lock, the same in every controller: one migrates at
# a time, the others wait and then find nothing left to do.
_MIGRATION_LOCK = 0x5CF1EE7
# The table that plays PRAGMA user_version's part; it holds one row.
_VERSION_TABLE = "schoolfleet_schema"


def describe(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql (a URL libpq cannot read)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or "")
    port = f" port {params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}/{params.get('dbname') or ''}{port}".rstrip()


def _line(exc: BaseException) -> str:
    # libpq's messages run to several lines (DETAIL, HINT, the connection attempts of
    # each host); the first says what happened.
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PgTx:
    """A connection inside a transaction, taking statements in SQLite's notation
    (controller/store/sql.py)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, query: str, params: Params = (), /) -> psycopg.Cursor[DictRow]:
        return self.conn.execute(pg_text(query), params)

    def executemany(self, query: str, params: Iterable[Params], /) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(pg_text(query), params)


class PgDatabase:
    """One PostgreSQL database; each feature's store is made with it (an
    SqlDatabase, controller/store/sql.py)."""

    dialect: Dialect = POSTGRESQL

    def __init__(self, url: str, *, max_connections: int = 8, timeout: float = 10.0) -> None:
        self.name = describe(url)
        self._url = url
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            connection_class=Connection,
            kwargs={"row_factory": dict_row},
            min_size=1,
            max_size=max_connections,
            timeout=timeout,
            # A connection that died with its server (a failover, a restart) is
            # replaced when it is next taken, not handed out to fail.
            check=ConnectionPool.check_connection,
            open=False,
            name="store",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
            self._migrate()
        except PoolTimeout:
            self._pool.close()
            raise StoreError(
                f"database {self.name}: no connection within {timeout:g} s{self._last_error()}"
            ) from None
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"database {self.name}: {_line(exc)}") from None
        except StoreError:
            self._pool.close()
            raise

    def _last_error(self) -> str:
        # The pool keeps retrying in the background and does not say why; one direct
        # attempt does.
        try:
            psycopg.connect(self._url, connect_timeout=5).close()
        except psycopg.Error as exc:
            return f" ({_line(exc)})"
        return ""

    def _migrate(self) -> None:
        with self._connection() as conn:
            # Under the lock: CREATE TABLE IF NOT EXISTS is no guard against another
            # session creating it at the same moment (a duplicate key in pg_type).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (version BIGINT NOT NULL)").format(
                    sql.Identifier(_VERSION_TABLE)
                )
            )
            version = self._version_in(conn)
        if version > LATEST:
            raise StoreError(
                f"database {self.name}: schema version {version} is newer than this "
                f"controller knows ({LATEST}); upgrade the controller"
            )
        for number in range(version + 1, LATEST + 1):
            with self._connection() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                # Another controller may have migrated while this one waited.
                if self._version_in(conn) >= number:
                    continue
                conn.execute(postgres_sql(number))
                self._set_version(conn, number)
            log.info("store migrated database=%s version=%d", self.name, number)

    @staticmethod
    def _version_in(conn: Connection) -> int:
        row = conn.execute(
            sql.SQL("SELECT max(version) AS v FROM {}").format(sql.Identifier(_VERSION_TABLE))
        ).fetchone()
        return int(row["v"]) if row is not None and row["v"] is not None else 0

    @staticmethod
    def _set_version(conn: Connection, number: int) -> None:
        table = sql.Identifier(_VERSION_TABLE)
        conn.execute(sql.SQL("DELETE FROM {}").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(table), (number,))

    def schema_version(self) -> int:
        """The schema version the database is at."""
        with self._connection() as conn:
            return self._version_in(conn)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        # psycopg's own notation; PostgreSQL's errors come out as ours.
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except PoolTimeout:
            raise StoreUnavailable(
                f"database {self.name}: no connection free or reachable"
            ) from None
        except psycopg.OperationalError as exc:
            # The connection, not the statement: a restart or failover under way.
            raise StoreUnavailable(f"database {self.name}: {_line(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"database {self.name}: {_line(exc)}") from None

    @contextmanager
    def transaction(self) -> Iterator[PgTx]:
        """A connection inside a transaction, committed when the block ends; any
        exception rolls everything back, and PostgreSQL's errors come out as ours."""
        with self._connection() as conn:
            yield PgTx(conn)

    def read(self, query: str, params: Params = ()) -> list[DictRow]:
        """The rows of one query."""
        with self.transaction() as tx:
            return tx.execute(query, params).fetchall()

    def write(self, query: str, params: Params = ()) -> int:
        """Runs one statement in its own transaction; the rows it touched."""
        with self.transaction() as tx:
            return tx.execute(query, params).rowcount

    def write_many(self, query: str, params: Sequence[Params]) -> None:
        """One statement per parameter set, all in one transaction."""
        with self.transaction() as tx:
            tx.executemany(query, params)

    def connect_alone(self) -> psycopg.Connection[tuple[object, ...]]:
        """A new connection of its own, not the pool's, in autocommit: for LISTEN,
        which holds a connection for as long as it listens."""
        return psycopg.connect(self._url, autocommit=True, connect_timeout=5)

    def close(self) -> None:
        """Closes the pool's connections."""
        self._pool.close()
