"""Folds ansible-runner's events into one ``HostResult`` per host of a rollout wave.

Pure: events in (the dicts ansible-runner hands its ``event_handler``), results out.
A host's first failure or unreachable is reported as soon as it arrives; the run's
closing ``playbook_on_stats`` then settles every host (and overrules a failure that a
block's ``rescue`` handled, or an ``ignore_unreachable`` task's lost connection).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from inventory.host_output import detail_json, output_of
from inventory.rollouts import HostOutcome, HostResult

NO_RESULT = "no result from ansible"
MESSAGE_MAX = 300

_FAILED = frozenset({"runner_on_failed", "runner_on_async_failed"})
_NOT_ENDED = frozenset({HostOutcome.CANCELLED, HostOutcome.INTERRUPTED})
# A task's own end (not a loop item's), and the status it gives the task.
_STATUS = {
    "runner_on_ok": "ok",
    "runner_on_async_ok": "ok",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
    "runner_on_failed": "failed",
    "runner_on_async_failed": "failed",
}
_HOST_EVENTS = frozenset(
    {
        "runner_on_start",
        "runner_on_ok",
        "runner_on_skipped",
        "runner_on_async_ok",
        "runner_item_on_ok",
        "runner_item_on_skipped",
        "runner_retry",
        "runner_on_unreachable",
        "runner_item_on_failed",
        *_FAILED,
    }
)


@dataclass(slots=True)
class _Bad:
    """One failure or unreachable of a host: the task, what it said, when it ended."""

    outcome: HostOutcome
    task: str
    message: str
    at: float | None
    # The task's result as Ansible gave it: return code, output, the rest.
    res: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Host:
    started_at: float | None = None
    last_at: float | None = None
    last_task: str = ""
    bad: list[_Bad] = field(default_factory=list)
    # Each task the host ran and how it went (ok, changed, failed, ignored, skipped,
    # unreachable): the host's result as ``rollout status --host`` shows it.
    tasks: list[tuple[str, str]] = field(default_factory=list)
    # The message of the latest failed loop item, per task: a loop task's own failure
    # only says "One or more items failed" when its results were too big to send.
    item_failures: dict[str, str] = field(default_factory=dict)


class WaveTally:
    """The events of one wave's ansible run, folded per host (inventory name = device id).

    ``wave`` is copied into every result, and the school id from ``schools`` (device id
    -> school id; "" where absent, for the caller to fill in). Feed it every event in
    order, then ask for ``results``.
    """

    def __init__(self, wave: int | None = None, schools: Mapping[str, str] | None = None) -> None:
        self._schools = dict(schools or {})
        self._wave = wave
        self._hosts: dict[str, _Host] = {}
        self._stats: Mapping[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """Whether the run's closing stats arrived: every host then has its outcome."""
        return self._stats is not None

    def feed(self, event: Mapping[str, Any]) -> HostResult | None:
        """Takes one event; returns a host's result when this event makes it known (its
        first failure or unreachable), else None."""
        kind = event.get("event")
        data = event.get("event_data")
        if not isinstance(data, Mapping):
            return None
        if kind == "playbook_on_stats":
            self._stats = data
        elif kind in _HOST_EVENTS and isinstance(name := data.get("host"), str):
            host = self._hosts.setdefault(name, _Host())
            bad = self._note(host, str(kind), data, _time(event.get("created")))
            if bad is not None and len(host.bad) == 1:
                return self._result(name, bad.outcome, bad.task, bad.message, bad.at, bad)
        return None

    def _note(
        self, host: _Host, kind: str, data: Mapping[str, Any], created: float | None
    ) -> _Bad | None:
        """Records one event of ``host``; returns the failure it was, if any."""
        at = _time(data.get("end")) or created
        host.started_at = host.started_at or _time(data.get("start")) or at
        host.last_at = at or host.last_at
        task = str(data.get("task") or "")
        host.last_task = task or host.last_task
        res = data.get("res")
        res = res if isinstance(res, Mapping) else {}
        bad = None
        if status := _STATUS.get(kind):
            changed = status == "ok" and res.get("changed")
            ignored = status == "failed" and data.get("ignore_errors")
            host.tasks.append((task, "changed" if changed else "ignored" if ignored else status))
        if kind == "runner_item_on_failed":
            host.item_failures[task] = describe(res)
        elif kind == "runner_on_unreachable":
            bad = _Bad(HostOutcome.UNREACHABLE, task, describe(res) or "unreachable", at, res)
        elif kind in _FAILED and not data.get("ignore_errors"):
            message = describe(res)
            if "results" not in res and task in host.item_failures:
                message = host.item_failures[task]
            bad = _Bad(HostOutcome.FAILED, task, message or "failed", at, res)
        if bad is not None:
            host.bad.append(bad)
        return bad

    def results(
        self, hosts: Iterable[str], *, cancelled: bool = False, reason: str = NO_RESULT
    ) -> dict[str, HostResult]:
        """Every host of the wave with an outcome: unreachable > failed > changed > ok.

        A host the run did not finish (no closing stats: cancelled, timed out, ansible
        died) keeps a failure it already had; otherwise, if the wave was cancelled, it
        is INTERRUPTED when a task had begun on it (it may be half changed), CANCELLED
        when none had; else FAILED with ``reason``.
        """
        return {name: self._settle(name, cancelled, reason) for name in hosts}

    def _settle(self, name: str, cancelled: bool, reason: str) -> HostResult:
        host = self._hosts.get(name, _Host())
        if self._stats is not None:
            return self._finished(name, host, self._stats)
        cause = _worst(host.bad)
        if cause is not None:
            return self._result(name, cause.outcome, cause.task, cause.message, cause.at, cause)
        if cancelled:
            begun = name in self._hosts
            outcome = HostOutcome.INTERRUPTED if begun else HostOutcome.CANCELLED
            return self._result(name, outcome, host.last_task, "", host.last_at)
        return self._result(name, HostOutcome.FAILED, host.last_task, reason, host.last_at)

    def _finished(self, name: str, host: _Host, stats: Mapping[str, Any]) -> HostResult:
        """A host's result once the run's stats are in: they have the last word."""
        if name not in _count_map(stats, "processed"):
            # The play's hosts pattern left it out, or ansible never got to it.
            return self._result(name, HostOutcome.FAILED, "", NO_RESULT, host.last_at)
        dark = _count(stats, "dark", name)
        if dark or _count(stats, "failures", name):
            # Failures a rescue handled come first; skip as many as the stats rescued.
            outcome = HostOutcome.UNREACHABLE if dark else HostOutcome.FAILED
            kept = [b for b in host.bad if b.outcome is outcome]
            if outcome is HostOutcome.FAILED:
                kept = kept[_count(stats, "rescued", name) :]
            cause = (kept or host.bad or [_Bad(outcome, "", outcome.value, None)])[0]
            at = cause.at or host.last_at
            return self._result(name, outcome, cause.task, cause.message, at, cause)
        changed = _count(stats, "changed", name) > 0
        outcome = HostOutcome.CHANGED if changed else HostOutcome.OK
        return self._result(name, outcome, "", "", host.last_at)

    def _result(
        self,
        name: str,
        outcome: HostOutcome,
        task: str,
        message: str,
        at: float | None,
        cause: _Bad | None = None,
    ) -> HostResult:
        host = self._hosts.get(name)
        rc, stdout, stderr = output_of(cause.res) if cause is not None else (None, "", "")
        ended = outcome.settled and outcome not in _NOT_ENDED
        return HostResult(
            device_id=name,
            school_id=self._schools.get(name, ""),
            wave=self._wave,
            outcome=outcome,
            task=task,
            message=message,
            started_at=host.started_at if host else None,
            finished_at=at if ended else None,
            rc=rc,
            stdout=stdout,
            stderr=stderr,
            detail=detail_json(host.tasks if host else [], cause.res if cause else None),
        )


def describe(res: Mapping[str, Any]) -> str:
    """One line about a failed result: its msg, with stderr's last line when there is
    one (``non-zero return code`` alone says little), else the exit code; for a loop,
    the first failed item's."""
    results = res.get("results")
    if isinstance(results, list):
        for item in results:
            if isinstance(item, Mapping) and (item.get("failed") or item.get("unreachable")):
                label = item.get("_ansible_item_label", item.get("item"))
                return one_line(f"item {label}: {describe(item)}")
    msg = _text(res.get("msg") or res.get("censored")).removeprefix("Task failed: ")
    detail = _last_line(res.get("stderr")) or _last_line(res.get("module_stderr"))
    rc = res.get("rc")
    if msg and detail and detail not in msg:
        text = f"{msg}: {detail}"
    elif msg or detail:
        text = msg or detail
    elif rc is not None:
        text = f"exit code {rc}"
    else:
        text = ""
    return one_line(text)


def one_line(text: str, limit: int = MESSAGE_MAX) -> str:
    """Whitespace (newlines too) folded to single spaces, cut at ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _worst(bad: list[_Bad]) -> _Bad | None:
    """The first unreachable, else the first failure."""
    unreachable = [b for b in bad if b.outcome is HostOutcome.UNREACHABLE]
    first = unreachable or bad
    return first[0] if first else None


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _last_line(value: object) -> str:
    lines = value if isinstance(value, list) else _text(value).splitlines()
    found = [_text(line).strip() for line in lines if _text(line).strip()]
    return found[-1] if found else ""


def _count_map(stats: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    counts = stats.get(key)
    return counts if isinstance(counts, Mapping) else {}


def _count(stats: Mapping[str, Any], key: str, host: str) -> int:
    value = _count_map(stats, key).get(host, 0)
    return value if isinstance(value, int) else 0


def _time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


ERROR_LINE = re.compile(r"^(?:\[ERROR\]:|ERROR!)\s*(.+)$")
ERROR_WHERE = re.compile(r"^Origin: .*:(\d+):\d+$|line (\d+), column \d+")


def first_error_in(lines: list[str]) -> str:
    """Ansible's first ERROR line among ``lines``, with the playbook line it names."""
    for index, line in enumerate(lines):
        if found := ERROR_LINE.match(line):
            where = next(
                (w for w in map(ERROR_WHERE.search, lines[index : index + 6]) if w is not None),
                None,
            )
            line_no = where and (where.group(1) or where.group(2))
            return found.group(1) + (f" (line {line_no})" if line_no else "")
    return ""
