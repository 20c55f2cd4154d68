"""What every feature's store shares: the database (one SQLite file, its connections,
its write lock), the numbered migrations of its one schema, and the rows a device's
stream brings. The stores themselves live with their features (``controller/*/store.py``
says what a feature needs, ``controller/*/sql_store.py`` keeps it in SQLite), and
controller/stores.py composes them over one database.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from controller.errors import StoreError

__all__ = ["sqlite_path"]


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
