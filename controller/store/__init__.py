"""The controller's store: protocols per aggregate and their implementations.

``open_store(url)`` picks the implementation from the URL's scheme.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from controller.errors import StoreError
from controller.store.protocol import (
    AccessStore,
    AgentRow,
    CommandResultRow,
    DeviceStore,
    EnrollTokenStore,
    HeartbeatRow,
    LessonEventRow,
    Store,
    StoredLessonEvent,
)
from controller.store.rollouts_protocol import HostsClaimed, NewHost, RolloutQuery, RolloutStore

__all__ = [
    "AccessStore",
    "AgentRow",
    "CommandResultRow",
    "DeviceStore",
    "EnrollTokenStore",
    "HeartbeatRow",
    "HostsClaimed",
    "LessonEventRow",
    "NewHost",
    "RolloutQuery",
    "RolloutStore",
    "Store",
    "StoredLessonEvent",
    "open_store",
    "sqlite_path",
]


def sqlite_path(url: str) -> Path:
    """``sqlite:///abs/path`` -> /abs/path; ``sqlite:rel/path`` -> rel/path."""
    if url.startswith("sqlite://"):
        parsed = urlparse(url)
        if parsed.netloc:
            raise StoreError(f"database {url!r}: sqlite URLs take no host; use sqlite:///PATH")
        return Path(parsed.path)
    if url.startswith("sqlite:") and len(url) > len("sqlite:"):
        return Path(url.removeprefix("sqlite:"))
    raise StoreError(f"database {url!r}: unsupported URL (expected sqlite:///PATH)")


def open_store(url: str) -> Store:
    """Opens (creating and migrating as needed) the store at ``url``."""
    from controller.store.sqlite import SqliteStore

    return SqliteStore(sqlite_path(url))
