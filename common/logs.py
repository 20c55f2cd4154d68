"""Logging set-up: one line per event, friendly to journald and grep.

Log lines carry text from people and devices (ids, selectors, messages), and whoever
sends it may be hostile. ``OneLineFormatter`` therefore writes every event as exactly
one line: control characters (a newline that would start a forged line, an escape
sequence that would redraw a terminal) are written as escapes, and a message is cut
at ``MESSAGE_MAX`` characters, so one request cannot fill the log. A traceback is our
own text and keeps its lines, each indented, so none of them reads as an event of its
own.
"""

from __future__ import annotations

import logging
import os
import re
import sys

_PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# journald stamps every line itself; a second timestamp would only be noise there.
_JOURNAL = "%(levelname)s %(name)s: %(message)s"
# Long enough for any line we write ourselves (a rollout's summary, a batch's ids).
MESSAGE_MAX = 2000
# A client-supplied value inside a message: ids and names are far shorter than this.
VALUE_MAX = 200
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(_escape_one, text)


def clip(text: str, limit: int = VALUE_MAX) -> str:
    """A client-supplied value for a log line: escaped, and cut to ``limit`` characters
    with a note of how many were left out."""
    if len(text) > limit:
        text = f"{text[:limit]}...({len(text) - limit} more characters)"
    return escape(text)


class OneLineFormatter(logging.Formatter):
    """Every event on one line, whatever its message holds; see the module's docstring."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # ``record.message`` is what the handler prints; the cut comes before the escape,
        # so an escape is never split in two.
        record.message = clip(record.message, MESSAGE_MAX)
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    # An exception's message may hold a client's text: its lines are escaped, and every
    # line is indented, so that none can pass for the start of an event.
    return "\n".join("    " + escape(line) for line in text.splitlines())


def setup_logging(level: str = "info") -> None:
    """Sends ``level`` and above to stderr, one line each, ``key=value`` ids inline.

    Under systemd (``JOURNAL_STREAM`` set) lines carry no timestamp of their own.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(_JOURNAL if "JOURNAL_STREAM" in os.environ else _PLAIN))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
