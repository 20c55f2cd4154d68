"""A PostgreSQL cluster of Debian's packages in a folder of its own, reached only by a
Unix socket in that folder: made by initdb as an unprivileged account (the `postgres`
account under root: the server refuses to run as root), started with pg_ctl and
stopped by the pid the server wrote, never by a name.

`make demo-city` keeps one under .demo/city/; tests/pg_cluster.py makes throwaway
ones and stops them with the same stop_by_pid.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

# Debian keeps each major version's server programs here, off PATH; .ci/packages.sh
# looks in the same folders.
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
ACCOUNT = "postgres"
# A Unix socket's path must fit in sun_path (108 bytes with its NUL).
SOCKET_PATH_MAX = 107
_SOCKET_NAME = ".s.PGSQL.5432"
_STOP_SECONDS = 30.0


class ClusterError(Exception):
    """The cluster could not be made, started or reached; the message is one line."""


def server_bindir() -> Path | None:
    """The folder of the newest installed server's initdb, pg_ctl and postgres: Debian's,
    else the one on PATH (a source build, another distribution); None when there is none."""
    versions = sorted(
        (int(m.group(1)), Path(p).parent)
        for p in Path("/").glob(DEBIAN_BINDIRS.lstrip("/") + "/initdb")
        if (m := re.search(r"/postgresql/(\d+)/bin/", str(p)))
    )
    if versions:
        return versions[-1][1]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass(frozen=True, slots=True)
class Account:
    """Whom the server runs as: the `postgres` account under root, else ourselves."""

    uid: int
    gid: int

    @classmethod
    def pick(cls) -> Account:
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid())
        try:
            entry = pwd.getpwnam(ACCOUNT)
        except KeyError:
            raise ClusterError(
                f"running as root, and there is no {ACCOUNT!r} account to run PostgreSQL as "
                "(Debian's postgresql package makes it)"
            ) from None
        return cls(entry.pw_uid, entry.pw_gid)

    def run(self, argv: list[str], what: str) -> None:
        """Runs ``argv`` as this account; a failure is a ClusterError with its last lines."""
        as_root = os.geteuid() == 0
        done = subprocess.run(
            argv,
            user=self.uid if as_root else None,
            group=self.gid if as_root else None,
            extra_groups=[] if as_root else None,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            # The server inherits this: a locale the machine lacks would stop initdb.
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ClusterError(f"{what} failed ({done.returncode}): {' | '.join(tail)}")

    def unreachable_parent(self, folder: Path) -> Path | None:
        """The first folder above ``folder`` this account may not pass through, if any
        (a home folder of mode 0700, say): the server could not reach its data there."""
        if self.uid == os.geteuid():
            return None
        for parent in reversed(folder.absolute().parents):
            mode = parent.stat()
            if mode.st_uid == self.uid:
                allowed = mode.st_mode & stat.S_IXUSR
            elif mode.st_gid == self.gid:
                allowed = mode.st_mode & stat.S_IXGRP
            else:
                allowed = mode.st_mode & stat.S_IXOTH
            if not allowed:
                return parent
        return None


def socket_url(folder: Path, database: str) -> str:
    """A libpq URL for ``database`` on the server listening in ``folder`` (no TCP)."""
    return f"postgresql:///{quote(database)}?host={quote(str(folder), safe='')}&user={ACCOUNT}"


def postmaster_pid(data: Path) -> int:
    """The server's pid, from the first line of postmaster.pid (PostgreSQL's own record)."""
    return int((data / "postmaster.pid").read_text().split("\n", 1)[0])


def _stat(pid: int) -> tuple[str, str] | None:
    """The state and start time of ``pid`` (None once it is gone and reaped): the start
    time tells the server from a later process given the same pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], fields[19]


def stop_by_pid(pid: int) -> None:
    """Fast shutdown (SIGINT: sessions ended, no checkpoint wait for clients), then
    immediate (SIGQUIT), then SIGKILL; returns once the server has exited and, where
    the machine's init does it promptly, been reaped."""
    first = _stat(pid)
    if first is None:
        return
    started = first[1]

    def running() -> bool:
        now = _stat(pid)
        # pg_ctl's server is no child of ours: init reaps it, until then a zombie.
        return now is not None and now[1] == started and now[0] not in {"Z", "X"}

    def signal_it(sig: signal.Signals) -> None:
        if running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig, patience in ((signal.SIGINT, _STOP_SECONDS), (signal.SIGQUIT, 5.0)):
        signal_it(sig)
        deadline = time.monotonic() + patience
        while running() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not running():
            break
    else:
        signal_it(signal.SIGKILL)
    # Left for init to reap: a second or so, so that `ps` after the run shows nothing.
    deadline = time.monotonic() + 5.0
    while (now := _stat(pid)) is not None and now[1] == started and time.monotonic() < deadline:
        time.sleep(0.02)


@dataclass(frozen=True, slots=True)
class Cluster:
    """A cluster in ``folder``: its data in folder/data, its socket and log in folder."""

    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str) -> str:
        return socket_url(self.folder, database)

    def running_pid(self) -> int | None:
        """The server's pid while it runs; None when it does not, even if a stale
        postmaster.pid names a pid some other program has since been given."""
        try:
            pid = postmaster_pid(self.data)
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        state = _stat(pid)
        ours = str(self.data).encode() in argv and state is not None and state[0] not in "ZX"
        return pid if ours else None

    def create(self, bindir: Path, account: Account) -> None:
        """initdb into folder/data, listening only on a socket in folder."""
        socket = self.folder / _SOCKET_NAME
        if len(str(socket)) > SOCKET_PATH_MAX:
            raise ClusterError(
                f"its socket {socket} would be longer than a socket path's "
                f"{SOCKET_PATH_MAX} bytes: use a shorter folder"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        if (parent := account.unreachable_parent(self.folder)) is not None:
            raise ClusterError(
                f"the {ACCOUNT} account cannot reach {self.folder}: {parent} is closed to it "
                f"(chmod o+x {parent}, or use a folder elsewhere)"
            )
        # What an initdb that failed half way left: initdb refuses a folder with files.
        shutil.rmtree(self.data, ignore_errors=True)
        os.chown(self.folder, account.uid, account.gid)
        # With trust authentication the socket is the lock: only the account (and root)
        # may enter the folder it is in.
        self.folder.chmod(0o700)
        account.run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                ACCOUNT,
                # Reached only through the socket, in a folder of mode 0700.
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C.UTF-8",
                # Not synced to disk at its end: 15 s less on a busy machine, and what a
                # crash right after could spoil is a cluster made a moment ago.
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# demo/pg.py: a socket in its own folder, no TCP\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.folder}'\n"
            )

    def start(self, bindir: Path, account: Account) -> int:
        """Starts the server and waits until it accepts connections; its pid."""
        account.run(
            [
                str(bindir / "pg_ctl"),
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
        pid = self.running_pid()
        if pid is None:
            raise ClusterError(f"the server started but does not run; see {self.folder}/server.log")
        return pid

    def stop(self) -> bool:
        """Stops the server by the pid it wrote, if it is ours and runs; whether it ran."""
        pid = self.running_pid()
        if pid is None:
            return False
        stop_by_pid(pid)
        return True

    def ensure_database(self, name: str) -> str:
        """Creates the database ``name`` unless it exists; its URL."""
        try:
            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                exists = "SELECT 1 FROM pg_database WHERE datname = %s"
                if conn.execute(exists, (name,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"database {name}: {first}") from None
        return self.url(name)
