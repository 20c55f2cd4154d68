"""grpcio's "Invalid encoding" lines: the value never shown, at most one line a minute."""

from __future__ import annotations

import logging

from controller.api.grpc_logs import MetadataValues


def _record(value: object) -> logging.LogRecord:
    try:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    except UnicodeDecodeError as exc:
        info = (type(exc), exc, exc.__traceback__)
    return logging.LogRecord(
        "grpc._cython.cygrpc", logging.ERROR, "x.pyx", 48, "Invalid encoding on %s", (value,), info
    )


def test_the_value_is_never_shown_and_repeats_are_counted() -> None:
    clock = [0.0]
    keep = MetadataValues(now=lambda: clock[0])
    first = _record(b"Bearer sfu_SECRET\xff")
    assert keep.filter(first)
    text = first.getMessage()
    assert "SECRET" not in text and "18 bytes" in text and first.exc_info is None
    assert not any(keep.filter(_record(b"Bearer sfu_AGAIN\xff")) for _ in range(50))
    clock[0] = 61.0
    later = _record(b"x\xff")
    assert keep.filter(later)
    assert "50 more since the last such line" in later.getMessage()
    # Its other records pass untouched.
    other = logging.LogRecord("grpc", logging.ERROR, "x", 1, "something else %s", ("v",), None)
    assert keep.filter(other) and other.getMessage() == "something else v"
