"""What a rollout keeps of one host's output: the failing task's return code, the ends
of its stdout and stderr, and a bounded JSON of the host's result.

A device's output is the device's data: it may be huge, binary, or carry terminal
escape sequences meant for whoever reads it. So it is cut to a known size where it is
read, and every control character (and Unicode's bidirectional overrides) is written
as an escape, so that printing it can neither move the cursor nor hide text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

TAIL_LINES = 20
TAIL_BYTES = 2048
DETAIL_BYTES = 16_384
TASKS_MAX = 100
# Within the detail: any one text, list, or nesting.
_VALUE_CHARS = 2048
_LIST_ITEMS = 50
_DEPTH = 6
# Module arguments repeat the playbook (and may hold values a task meant to keep out
# of logs); the result is what happened, not what was asked.
_LEFT_OUT = frozenset({"invocation", "_ansible_no_log"})

# C0 and C1 controls except tab and newline; DEL; bidirectional overrides and isolates.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters written as ``\\xNN`` (``\\uNNNN`` above 0xff);
    tabs and newlines kept."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(_text(v) for v in value)
    return value if isinstance(value, str) else str(value)


def tail(value: object, lines: int = TAIL_LINES, limit: int = TAIL_BYTES) -> str:
    """The last ``lines`` lines of ``value`` (text, or a list of lines), escaped, and at
    most ``limit`` bytes of UTF-8: a cut start is marked with ``…``."""
    kept = [printable(line) for line in _text(value).rstrip().splitlines()[-lines:]]
    data = "\n".join(kept).encode()
    if len(data) <= limit:
        return data.decode()
    # "…" is 3 bytes; a character cut in two at the start is dropped.
    return "…" + data[len(data) - limit + 3 :].decode(errors="ignore")


def output_of(res: Mapping[str, Any]) -> tuple[int | None, str, str]:
    """(return code, stdout's end, stderr's end) of a task's result; for a loop, of its
    first failed item."""
    items = res.get("results")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping) and (item.get("failed") or item.get("unreachable")):
                return output_of(item)
    rc = res.get("rc")
    code = rc if isinstance(rc, int) and not isinstance(rc, bool) else None
    stdout = res.get("stdout") or res.get("module_stdout")
    stderr = res.get("stderr") or res.get("module_stderr")
    return code, tail(stdout), tail(stderr)


def _bounded(value: Any, depth: int = 0) -> Any:
    """A JSON-able copy of ``value``: texts cut (their end kept: output ends matter),
    lists shortened, deep nesting elided."""
    if depth > _DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return {
            str(k)[:200]: _bounded(v, depth + 1)
            for k, v in list(value.items())[:_LIST_ITEMS]
            if k not in _LEFT_OUT
        }
    if isinstance(value, list | tuple):
        kept = [_bounded(v, depth + 1) for v in value[:_LIST_ITEMS]]
        return kept + ([f"… {len(value) - _LIST_ITEMS} more"] if len(value) > _LIST_ITEMS else [])
    if value is None or isinstance(value, bool | int | float):
        return value
    text = _text(value)
    return text if len(text) <= _VALUE_CHARS else "…" + text[-_VALUE_CHARS + 1 :]


def detail_json(tasks: Sequence[tuple[str, str]], result: Mapping[str, Any] | None) -> str:
    """A host's result as JSON of at most DETAIL_BYTES: each task it ran with its
    status (the last TASKS_MAX), and the failing task's result. ASCII only: every
    control character inside is a JSON escape."""
    shown = [{"task": t[:200], "status": s} for t, s in tasks[-TASKS_MAX:]]
    data: dict[str, Any] = {"tasks": shown}
    if len(tasks) > TASKS_MAX:
        data["tasks_left_out"] = len(tasks) - TASKS_MAX
    if result is not None:
        data["result"] = _bounded(result)
    text = json.dumps(data, ensure_ascii=True, sort_keys=True)
    if len(text) > DETAIL_BYTES and "result" in data:
        too_big = f"the result is {len(text)} bytes; the limit is {DETAIL_BYTES}"
        data["result"] = {"left_out": too_big}
        text = json.dumps(data, ensure_ascii=True, sort_keys=True)
    while len(text) > DETAIL_BYTES and data["tasks"]:
        data["tasks"] = data["tasks"][len(data["tasks"]) // 2 :]
        data["tasks_left_out"] = len(tasks) - len(data["tasks"])
        text = json.dumps(data, ensure_ascii=True, sort_keys=True)
    return text


def bounded_detail(text: str) -> str:
    """A detail from a less trusted process (the wave worker runs as Ansible's user):
    kept if it is a JSON object within DETAIL_BYTES, else replaced by one that says so."""
    if len(text) > DETAIL_BYTES:
        return json.dumps({"left_out": f"the detail is over {DETAIL_BYTES} bytes"})
    if not text:
        return ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return json.dumps({"left_out": "the detail was not a JSON object"})
    return json.dumps(data, ensure_ascii=True, sort_keys=True)
