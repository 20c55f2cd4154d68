"""A throwaway PostgreSQL cluster for the tests, or the server SCHOOLFLEET_TEST_PG_URL names.

The cluster is Debian's PostgreSQL: initdb into a temporary folder as an unprivileged
user (the `postgres` account when the suite runs as root: the server refuses to run as
root), listening only on a Unix socket in that folder, fsync off. It is migrated once
into a template database; each test gets a fresh copy of it (CREATE DATABASE ...
TEMPLATE, a file copy, tens of milliseconds) and the copy is dropped after the test.
The server is stopped by its own pid and the folder removed, whatever the tests did.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import pytest
from psycopg import sql

from controller.store.pg_database import PgDatabase

# Finding the server, its account, the socket URL and the stop by pid are the city
# demo's too (make demo-city).
from demo import pg
from demo.pg import postmaster_pid, socket_url, stop_by_pid

URL_VARIABLE = "SCHOOLFLEET_TEST_PG_URL"
_ACCOUNT = "postgres"


def server_bindir() -> Path:
    """The newest installed server's programs (demo/pg.py); fails the test in one line
    naming the package when there is none."""
    found = pg.server_bindir()
    if found is None:
        pytest.fail(
            "initdb is missing: Debian package postgresql "
            "(make packages installs it as root, or names the command)",
            pytrace=False,
        )
    return found


@dataclass(frozen=True, slots=True)
class _Account:
    """demo/pg.py's Account, its failures failing the test in one line."""

    account: pg.Account

    @classmethod
    def pick(cls) -> _Account:
        try:
            return cls(pg.Account.pick())
        except pg.ClusterError as exc:
            pytest.fail(str(exc), pytrace=False)

    def run(self, argv: list[str], what: str) -> None:
        try:
            self.account.run(argv, what)
        except pg.ClusterError as exc:
            pytest.fail(str(exc), pytrace=False)


@dataclass(frozen=True, slots=True)
class Cluster:
    """A cluster in ``folder`` (its socket there too), started and stopped by pid."""

    folder: Path
    bindir: Path
    account: _Account

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str) -> str:
        return socket_url(self.folder, database)

    def start(self) -> None:
        self.account.run(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "--pgdata",
                str(self.data),
                "--wait",
                "--timeout",
                "60",
                "--log",
                str(self.folder / "server.log"),
            ],
            "pg_ctl start",
        )

    def stop(self) -> None:
        # Stopped by the pid the server wrote, never by a name: others' servers and
        # other runs' clusters live on this machine too.
        if (self.data / "postmaster.pid").exists():
            stop_by_pid(postmaster_pid(self.data))


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """Starts a cluster in a new folder; the server is stopped and the folder removed on
    the way out, whatever happened."""
    account = _Account.pick()
    with contextlib.ExitStack() as cleanup:
        # Short, under /tmp: a Unix socket's path must fit in 107 bytes, and pytest's
        # own temporary folders (/tmp/pytest-of-root/pytest-N/...) can come close.
        folder = Path(tempfile.mkdtemp(prefix="sf-pg-", dir="/tmp"))
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        os.chown(folder, account.account.uid, account.account.gid)
        cluster = Cluster(folder, server_bindir(), account)
        account.run(
            [
                str(cluster.bindir / "initdb"),
                "--pgdata",
                str(cluster.data),
                "--username",
                _ACCOUNT,
                # Reached only through the socket in a folder of mode 0700.
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tests/pg_cluster.py: a socket in its own folder, no TCP, no durability\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{folder}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
            )
        cleanup.callback(cluster.stop)
        cluster.start()
        yield cluster


@dataclass
class PgServer:
    """A server the tests may create databases on, and the migrated template to copy."""

    admin_url: str
    url_of: Callable[[str], str]
    template: str
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def fresh_database(self) -> str:
        """A new database copied from the migrated template; its URL."""
        name = f"{self.template}_{next(self._names)}"
        self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(self.template)
            )
        )
        return self.url_of(name)

    def empty_database(self) -> str:
        """A new database with no schema at all (template0); its URL."""
        name = f"{self.template}_{next(self._names)}"
        self._admin(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        return self.url_of(name)

    def drop(self, url: str) -> None:
        """Drops the database at ``url``, ending its sessions (a test's open pool)."""
        name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def drop_all(self) -> None:
        """Drops the template and every copy (a shared server outlives the run)."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
                    (self.template, self.template.replace("_", r"\_") + r"\_%"),
                )
            ]
            for name in names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@contextlib.contextmanager
def _migrated_template(admin_url: str, url_of: Callable[[str], str]) -> Iterator[PgServer]:
    """The server with a migrated template database, dropped with its copies after."""
    # Named for this run: on a shared server another run may be copying its own.
    server = PgServer(admin_url, url_of, f"sf_test_{os.getpid()}_{int(time.time())}")
    try:
        server._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(server.template)))
        # Migrated once; CREATE DATABASE ... TEMPLATE needs nobody connected to it, so
        # the pool is closed before the first copy.
        PgDatabase(url_of(server.template)).close()
        yield server
    finally:
        server.drop_all()


def with_database(url: str, name: str) -> str:
    """``url`` (a postgresql:// URL) naming the database ``name`` instead."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dbname"]
    # Built by hand: urlunsplit drops the "//" of an empty host (a socket's URL).
    tail = f"?{urlencode(query)}" if query else ""
    return f"{parts.scheme}://{parts.netloc}/{quote(name, safe='')}{tail}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server of this run: SCHOOLFLEET_TEST_PG_URL's (a role that may
    create databases), else a throwaway cluster stopped at the end of the session."""
    given = os.environ.get(URL_VARIABLE)
    if given:
        if not given.startswith(("postgresql://", "postgres://")):
            pytest.fail(f"{URL_VARIABLE} must be a postgresql:// URL", pytrace=False)
        with _migrated_template(given, lambda name: with_database(given, name)) as server:
            yield server
        return
    with (
        throwaway_cluster() as cluster,
        _migrated_template(cluster.url("postgres"), cluster.url) as server,
    ):
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, migrated database for one test, dropped after it."""
    url = pg_server.fresh_database()
    try:
        yield url
    finally:
        pg_server.drop(url)
