"""Logging set-up: one line per event, friendly to journald and grep."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "info") -> None:
    """Sends ``level`` and above to stderr, one line each, ``key=value`` ids inline."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
