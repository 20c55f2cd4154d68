"""Every feature's store over one database: what the controller's assembly hands out,
each consumer taking only the store (or the method) it uses.

The stores share the database's connections (and on SQLite its write lock) and its
migrations, and nothing else: none calls another, except where one transaction must
span two features (a batch of a device's messages stores its panels' lesson events),
which is a method handed in when the devices' store is made.

The database is chosen by URL: ``sqlite:...`` or ``postgresql://...`` (any URL libpq
takes). Each store is written once for both (controller/store/sql.py), and each
feature's contract suite runs on both (tests/test_*_store_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.enroll.sql_store import SqlEnrollments
from controller.errors import StoreError
from controller.fleet.sql_store import SqlDevices
from controller.infra.sql_store import SqlInfra
from controller.leases.sql_store import SqlLeases
from controller.lessons.sql_counts import SqlLessonCounts
from controller.lessons.sql_store import SqlLessons
from controller.people.sql_store import SqlPeople
from controller.people.store import AccessStore
from controller.rollouts.sql_slices import SqlSlices
from controller.rollouts.sql_store import SqlRollouts
from controller.store import sqlite_path
from controller.store.database import Database
from controller.store.pg_database import PgDatabase
from controller.store.sql import SqlDatabase
from controller.uplink.sql_store import SqlUplink

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class Stores:
    """The controller's stores, one per feature, over one database ``sql``."""

    sql: SqlDatabase
    people: AccessStore
    devices: SqlDevices
    enrollments: SqlEnrollments
    lessons: SqlLessons
    lesson_counts: SqlLessonCounts
    rollouts: SqlRollouts
    slices: SqlSlices
    uplink: SqlUplink
    infra: SqlInfra
    leases: SqlLeases
    _close: Callable[[], None]

    @property
    def name(self) -> str:
        """The database's name, without a password."""
        return self.sql.name

    @property
    def shared(self) -> bool:
        """Whether other controllers may share this store (PostgreSQL; a SQLite file is
        one controller's)."""
        return not isinstance(self.sql, Database)

    def close(self) -> None:
        """Releases the database's connections."""
        self._close()

    @property
    def database(self) -> Database:
        """The SQLite file (its tests and the backup read it directly)."""
        if not isinstance(self.sql, Database):
            raise StoreError(f"database {self.name} is PostgreSQL: it has no SQLite file")
        return self.sql


def open_stores(url: str, connections: int = 8) -> Stores:
    """Opens (creating and migrating as needed) the database at ``url`` and every
    feature's store on it; on PostgreSQL with a pool of at most ``connections``."""
    if url.startswith(POSTGRES_SCHEMES):
        return stores_on(PgDatabase(url, max_connections=connections))
    return stores_on(Database(sqlite_path(url)))


def sqlite_stores(path: Path) -> Stores:
    """The stores on the SQLite file at ``path``."""
    return stores_on(Database(path))


def stores_on(db: SqlDatabase) -> Stores:
    """Every feature's store on ``db``."""
    enrollments = SqlEnrollments(db)
    lessons = SqlLessons(db)
    return Stores(
        sql=db,
        people=SqlPeople(db),
        devices=SqlDevices(db, enrollments.get_enrollment, lessons.record_event_in_batch),
        enrollments=enrollments,
        lessons=lessons,
        lesson_counts=SqlLessonCounts(db),
        rollouts=SqlRollouts(db),
        slices=SqlSlices(db),
        uplink=SqlUplink(db),
        infra=SqlInfra(db),
        leases=SqlLeases(db),
        _close=db.close,
    )
