"""Every feature's store over one database: what the controller's assembly hands out,
each consumer taking only the store (or the method) it uses.

The stores share the database's connections, write lock and migrations, and nothing
else: none calls another, except where one transaction must span two features (a
batch of a device's messages stores its panels' lesson events), which is a method
handed in when the devices' store is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.enroll.sqlite_store import SqliteEnrollments
from controller.fleet.sqlite_store import SqliteDevices
from controller.infra.sqlite_store import SqliteInfra
from controller.lessons.sqlite_counts import SqliteLessonCounts
from controller.lessons.sqlite_store import SqliteLessons
from controller.people.sqlite_store import SqlitePeople
from controller.rollouts.sqlite_store import SqliteRollouts
from controller.store import sqlite_path
from controller.store.database import Database
from controller.uplink.sqlite_store import SqliteUplink


@dataclass(frozen=True, slots=True)
class Stores:
    """The controller's stores, one per feature, over ``database``."""

    database: Database
    devices: SqliteDevices
    enrollments: SqliteEnrollments
    people: SqlitePeople
    lessons: SqliteLessons
    lesson_counts: SqliteLessonCounts
    rollouts: SqliteRollouts
    uplink: SqliteUplink
    infra: SqliteInfra

    def close(self) -> None:
        """Releases the database's connections."""
        self.database.close()


def open_stores(url: str) -> Stores:
    """Opens (creating and migrating as needed) the database at ``url`` and every
    feature's store on it."""
    return sqlite_stores(sqlite_path(url))


def sqlite_stores(path: Path) -> Stores:
    """The stores on the SQLite file at ``path``."""
    db = Database(path)
    enrollments = SqliteEnrollments(db)
    lessons = SqliteLessons(db)
    return Stores(
        database=db,
        devices=SqliteDevices(db, enrollments.get_enrollment, lessons.record_event_in_batch),
        enrollments=enrollments,
        people=SqlitePeople(db),
        lessons=lessons,
        lesson_counts=SqliteLessonCounts(db),
        rollouts=SqliteRollouts(db),
        uplink=SqliteUplink(db),
        infra=SqliteInfra(db),
    )
