"""Every feature's store over one database: what the controller's assembly hands out,
each consumer taking only the store (or the method) it uses.

The stores share the database's connections, write lock and migrations, and nothing
else: none calls another, except where one transaction must span two features (a
batch of a device's messages stores its panels' lesson events), which is a method
handed in when the devices' store is made.

The database is chosen by URL: ``sqlite:...`` has every feature's store;
``postgresql://...`` (any URL libpq takes) has, so far, only the people's (issue 21
moves the others over one by one): asking it for another feature's store raises a
StoreError saying so, and the controller refuses to serve on it (``require_every``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.enroll.sqlite_store import SqliteEnrollments
from controller.errors import StoreError
from controller.fleet.sqlite_store import SqliteDevices
from controller.infra.sqlite_store import SqliteInfra
from controller.lessons.sqlite_counts import SqliteLessonCounts
from controller.lessons.sqlite_store import SqliteLessons
from controller.people.pg_store import PgPeople
from controller.people.sqlite_store import SqlitePeople
from controller.people.store import AccessStore
from controller.rollouts.sqlite_store import SqliteRollouts
from controller.store import sqlite_path
from controller.store.database import Database
from controller.store.pg_database import PgDatabase
from controller.uplink.sqlite_store import SqliteUplink

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class SqliteOnly:
    """The stores not yet on PostgreSQL, over the SQLite ``database``."""

    database: Database
    devices: SqliteDevices
    enrollments: SqliteEnrollments
    lessons: SqliteLessons
    lesson_counts: SqliteLessonCounts
    rollouts: SqliteRollouts
    uplink: SqliteUplink
    infra: SqliteInfra


@dataclass(frozen=True, slots=True)
class Stores:
    """The controller's stores, one per feature, over one database (``name``, without
    a password). A feature already on both databases is a field typed by its store's
    Protocol; the others are properties of ``sqlite``, None on PostgreSQL."""

    name: str
    people: AccessStore
    sqlite: SqliteOnly | None
    _close: Callable[[], None]

    def close(self) -> None:
        """Releases the database's connections."""
        self._close()

    def _on_sqlite(self, feature: str) -> SqliteOnly:
        if self.sqlite is None:
            raise StoreError(
                f"database {self.name}: the {feature} store is not yet on PostgreSQL "
                "(only the people's is); use a sqlite: database for now"
            )
        return self.sqlite

    def require_every(self) -> None:
        """Raises a StoreError unless every feature's store is there (what serving needs)."""
        self._on_sqlite("fleet, enrollment, lesson, rollout, uplink and infrastructure")

    @property
    def database(self) -> Database:
        """The SQLite file (its tests and the backup read it directly)."""
        if self.sqlite is None:
            raise StoreError(f"database {self.name} is PostgreSQL: it has no SQLite file")
        return self.sqlite.database

    @property
    def devices(self) -> SqliteDevices:
        return self._on_sqlite("fleet").devices

    @property
    def enrollments(self) -> SqliteEnrollments:
        return self._on_sqlite("enrollment").enrollments

    @property
    def lessons(self) -> SqliteLessons:
        return self._on_sqlite("lesson").lessons

    @property
    def lesson_counts(self) -> SqliteLessonCounts:
        return self._on_sqlite("lesson").lesson_counts

    @property
    def rollouts(self) -> SqliteRollouts:
        return self._on_sqlite("rollout").rollouts

    @property
    def uplink(self) -> SqliteUplink:
        return self._on_sqlite("uplink").uplink

    @property
    def infra(self) -> SqliteInfra:
        return self._on_sqlite("infrastructure").infra


def open_stores(url: str) -> Stores:
    """Opens (creating and migrating as needed) the database at ``url`` and every
    feature's store on it."""
    if url.startswith(POSTGRES_SCHEMES):
        return pg_stores(url)
    return sqlite_stores(sqlite_path(url))


def sqlite_stores(path: Path) -> Stores:
    """The stores on the SQLite file at ``path``."""
    db = Database(path)
    enrollments = SqliteEnrollments(db)
    lessons = SqliteLessons(db)
    return Stores(
        name=str(path),
        people=SqlitePeople(db),
        sqlite=SqliteOnly(
            database=db,
            devices=SqliteDevices(db, enrollments.get_enrollment, lessons.record_event_in_batch),
            enrollments=enrollments,
            lessons=lessons,
            lesson_counts=SqliteLessonCounts(db),
            rollouts=SqliteRollouts(db),
            uplink=SqliteUplink(db),
            infra=SqliteInfra(db),
        ),
        _close=db.close,
    )


def pg_stores(url: str) -> Stores:
    """The stores on the PostgreSQL database at ``url`` (passed to libpq as it is)."""
    db = PgDatabase(url)
    return Stores(name=db.name, people=PgPeople(db), sqlite=None, _close=db.close)
