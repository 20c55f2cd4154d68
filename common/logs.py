"""Logging set-up: one line per event, friendly to journald and grep."""

from __future__ import annotations

import logging
import os
import sys

_PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# journald stamps every line itself; a second timestamp would only be noise there.
_JOURNAL = "%(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "info") -> None:
    """Sends ``level`` and above to stderr, one line each, ``key=value`` ids inline.

    Under systemd (``JOURNAL_STREAM`` set) lines carry no timestamp of their own.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_JOURNAL if "JOURNAL_STREAM" in os.environ else _PLAIN))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
