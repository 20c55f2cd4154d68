"""What gRPC's own Python logger may not write: the metadata values it cannot decode.

grpcio decodes each metadata value as UTF-8 and, when that fails, logs
``Invalid encoding on <the whole value>`` with a traceback (grpc_string.pyx.pxi,
logger ``grpc._cython.cygrpc``), before any handler runs. The value is whatever a
client sent, a bearer token included, so a token with one stray byte would reach
the log whole, once per request. ``hide_metadata_values`` keeps the fact and its
size, at most one line a minute with a count, and never the value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

GRPC_LOGGER = "grpc._cython.cygrpc"
_INVALID = "Invalid encoding on %s"
EVERY = 60.0
_SHOWN = (
    "a request's metadata value is not UTF-8 (%d bytes, not shown; "
    "%d more since the last such line)"
)


class MetadataValues(logging.Filter):
    """Rewrites grpcio's "Invalid encoding" records without their value; folds them."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._now = now
        self._last = -EVERY
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _INVALID:
            return True
        value = record.args[0] if isinstance(record.args, tuple) and record.args else b""
        size = len(value) if isinstance(value, bytes | str) else 0
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        now = self._now()
        if now - self._last < EVERY:
            self._held += 1
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = _SHOWN
        record.args = (size, self._held)
        self._last, self._held = now, 0
        return True


def hide_metadata_values() -> None:
    """Installs the filter on grpcio's logger (once, however often it is called)."""
    logger = logging.getLogger(GRPC_LOGGER)
    if not any(isinstance(f, MetadataValues) for f in logger.filters):
        logger.addFilter(MetadataValues())
