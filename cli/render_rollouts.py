"""How schoolctl shows rollouts and maintenance windows: JSON for scripts, text for people."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.client.rollout_values import RolloutHost, RolloutInfo, RolloutWave, SchoolWindows
from cli.render import age, iso
from inventory.host_output import printable
from inventory.rollouts import (
    Amount,
    HostOutcome,
    RolloutInputError,
    RolloutSpec,
    RolloutState,
    parse_amount,
    wave_size,
)

_STATE_STYLE = {
    RolloutState.RUNNING: "cyan",
    RolloutState.PAUSED: "yellow",
    RolloutState.HALTED: "red",
    RolloutState.ABORTED: "red",
    RolloutState.DONE: "green",
    RolloutState.DONE_UNREACHED: "yellow",
}
_OUTCOME_STYLE = {
    HostOutcome.OK: "green",
    HostOutcome.CHANGED: "green",
    HostOutcome.FAILED: "red",
    HostOutcome.UNREACHABLE: "red",
    HostOutcome.CANCELLED: "yellow",
    HostOutcome.INTERRUPTED: "red",
}
# Python 3.11's `"x" in SomeEnum` raises for a non-member, and the controller may be newer.
_OUTCOMES = {o.value for o in HostOutcome}
_STATES = {s.value for s in RolloutState}
_BAD = {o.value for o in HostOutcome if o.bad}
# Shown with their task and output: bad, or stopped half way by an abort.
_SHOWN = _BAD | {HostOutcome.INTERRUPTED.value}
# The people view prints the output ends of this many failing hosts (--host: any).
OUTPUT_SHOWN = 5
_UNSETTLED = {o.value for o in HostOutcome if not o.settled}


def is_final(state: str) -> bool:
    """Halted, aborted, done or done-unreached: nothing more will happen to it."""
    return state in {s.value for s in RolloutState if s.final}


def _amount(text: str, default: Amount) -> Amount:
    try:
        return parse_amount(text, "amount") if text else default
    except RolloutInputError:
        return default


def wave_plan(total: int, canary: str, wave: str) -> list[int]:
    """The sizes of the waves ``total`` hosts go in: the canary, then doubling up to
    the wave size (inventory/rollouts.py decides; this only adds them up)."""
    defaults = RolloutSpec("", "")
    spec = RolloutSpec(
        "", "", canary=_amount(canary, defaults.canary), wave_size=_amount(wave, defaults.wave_size)
    )
    sizes: list[int] = []
    left = total
    while left > 0:  # a wave takes at least one host
        size = min(left, wave_size(spec, total, len(sizes)))
        sizes.append(size)
        left -= size
    return sizes


def plan_text(sizes: list[int]) -> str:
    """``1, 2, 4, 8, 16, 24 (9 times), 7``: runs of equal waves shortened."""
    parts: list[str] = []
    i = 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        parts.append(
            f"{sizes[i]} ({j - i} times)" if j - i > 2 else ", ".join(map(str, sizes[i:j]))
        )
        i = j
    return ", ".join(parts) or "none"


def progress(info: RolloutInfo) -> tuple[int, int]:
    """(settled hosts, all hosts): the hosts whose outcome is known, cancelled included."""
    total = sum(info.counts.values())
    return total - sum(n for k, n in info.counts.items() if k in _UNSETTLED), total


def progress_note(info: RolloutInfo) -> str:
    """Beside the progress bar: the state, and why it stopped or what it waits for."""
    why = info.reason if is_final(info.state) else info.waiting
    return f"{info.state}: {why}" if why else info.state


def _ordered_counts(info: RolloutInfo) -> list[tuple[str, int]]:
    order = [o.value for o in HostOutcome] + sorted(set(info.counts) - _OUTCOMES)
    return [(k, info.counts[k]) for k in order if info.counts.get(k)]


def counts_text(info: RolloutInfo) -> str:
    """``240: 200 ok, 3 failed, 37 pending`` (markup)."""
    parts = []
    for outcome, n in _ordered_counts(info):
        style = _OUTCOME_STYLE.get(HostOutcome(outcome)) if outcome in _OUTCOMES else None
        text = f"{n} {escape(outcome)}"
        parts.append(f"[{style}]{text}[/]" if style else text)
    return f"{sum(info.counts.values())}: {', '.join(parts) or 'no hosts'}"


def _state(state: str) -> str:
    style = _STATE_STYLE.get(RolloutState(state)) if state in _STATES else None
    return f"[{style}]{escape(state)}[/]" if style else escape(state) or "-"


def _extra_vars(info: RolloutInfo) -> Any:
    if not info.extra_vars_json:
        return {}
    try:
        return json.loads(info.extra_vars_json)
    except ValueError:
        return info.extra_vars_json


def budget_json(info: RolloutInfo) -> dict[str, Any]:
    """The --max-fail budget: hosts that may fail or be unreachable, how many have."""
    return {
        "max_fail": info.max_fail,
        "allowed": info.fail_budget,
        "used": info.fail_budget_used,
        "left": max(0, info.fail_budget - info.fail_budget_used),
        "passed": info.fail_budget_used > info.fail_budget,
    }


def budget_text(info: RolloutInfo) -> str:
    """``1 of 2 hosts may still fail (40% of 5 hosts; 1 failed or unreachable)``."""
    budget = budget_json(info)
    total = sum(info.counts.values())
    of = f"{info.max_fail:g}% of {total} hosts; {budget['used']} failed or unreachable"
    if budget["passed"]:
        return f"passed: {budget['used']} failed or unreachable, {budget['allowed']} allowed"
    return f"{budget['left']} of {budget['allowed']} hosts may still fail ({of})"


def _host_json(h: RolloutHost) -> dict[str, Any]:
    return {
        "device_id": h.device_id,
        "school_id": h.school_id,
        "wave": h.wave or None,
        "outcome": h.outcome,
        "task": h.task,
        "message": h.message,
        "rc": h.rc,
        "stdout_tail": printable(h.stdout_tail),
        "stderr_tail": printable(h.stderr_tail),
        "started_at": iso(h.started_at),
        "finished_at": iso(h.finished_at),
    }


def rollout_json(info: RolloutInfo) -> dict[str, Any]:
    """A rollout as a plain dict with ISO times; ``hosts`` is empty in lists."""
    settled, total = progress(info)
    return {
        "rollout_id": info.rollout_id,
        "playbook": info.playbook,
        "selector": info.selector,
        "canary": info.canary,
        "wave_size": info.wave_size,
        "max_fail": info.max_fail,
        "gate_lessons": info.gate_lessons,
        "extra_vars": _extra_vars(info),
        "state": info.state,
        "final": is_final(info.state),
        "reason": info.reason,
        "waiting": info.waiting,
        "dry_run": info.dry_run,
        "include_offline": info.include_offline,
        "strategy": info.strategy,
        # Offline at the start, left out: not reached by this rollout.
        "offline_skipped": list(info.offline_skipped),
        "offline_skipped_count": info.offline_skipped_count,
        "created_by": info.created_by,
        "created_at": iso(info.created_at),
        "updated_at": iso(info.updated_at),
        "finished_at": iso(info.finished_at),
        "fail_budget": budget_json(info),
        "total": total,
        "settled": settled,
        # Every outcome, zero where none, so scripts can read counts["failed"].
        "counts": {o.value: info.counts.get(o.value, 0) for o in HostOutcome} | dict(info.counts),
        "plan": wave_plan(total, info.canary, info.wave_size),
        "waves": [
            {
                "wave": w.wave,
                "hosts": w.hosts,
                "failed": w.failed,
                "started_at": iso(w.started_at),
                "finished_at": iso(w.finished_at),
            }
            for w in info.waves
        ],
        "hosts": [_host_json(h) for h in info.hosts],
    }


def _detail(h: RolloutHost) -> Any:
    if not h.detail_json:
        return {}
    try:
        return json.loads(h.detail_json)
    except ValueError:
        return {"unreadable": printable(h.detail_json[:200])}


def host_json(info: RolloutInfo) -> dict[str, Any]:
    """``rollout status ID --host DEVICE --json``: the rollout's state and that host's
    whole stored result (its tasks, and the failing task's result)."""
    host = info.hosts[0] if info.hosts else RolloutHost()
    return {
        "rollout_id": info.rollout_id,
        "playbook": info.playbook,
        "state": info.state,
        "host": _host_json(host) | {"detail": _detail(host)},
    }


def _options(info: RolloutInfo) -> str:
    text = (
        f"canary {info.canary or '-'}, then doubling up to {info.wave_size or '-'} a wave; "
        f"halts when more than {info.max_fail:g}% of all hosts failed or were unreachable"
    )
    text += "; halts if lessons fail more often" if info.gate_lessons else ""
    return text + (f"; Ansible strategy {escape(info.strategy)}" if info.strategy else "")


def _schools(info: RolloutInfo) -> str:
    per_school = Counter(h.school_id for h in info.hosts)
    return ", ".join(f"{escape(s)}: {n}" for s, n in sorted(per_school.items()))


def _offline_text(info: RolloutInfo, named_max: int = 10) -> str:
    """``3 offline at the start: a, b, c`` (markup): hosts the rollout left out."""
    names = [escape(d) for d in info.offline_skipped[:named_max]]
    more = info.offline_skipped_count - len(names)
    listed = ", ".join(names) + (f" and {more} more" if more > 0 and names else "")
    return f"{info.offline_skipped_count} offline at the start" + (f": {listed}" if listed else "")


def started_lines(info: RolloutInfo) -> list[str]:
    """What ``rollout start`` and ``retry`` say: the id, hosts and waves plan (markup)."""
    total = len(info.hosts) or sum(info.counts.values())
    hosts = f"{total} host(s) ({escape(info.selector)})"
    if info.dry_run:
        lines = [f"dry run, nothing was started: {escape(info.playbook)} would go to {hosts}"]
    else:
        lines = [f"rollout {info.rollout_id} started: {escape(info.playbook)} to {hosts}"]
    if info.hosts:
        lines.append(f"hosts by school: {_schools(info)}")
    first = [escape(h.device_id) for h in info.hosts if h.wave == 1]
    if first:
        lines.append(f"first wave (canary): {', '.join(first)}")
    sizes = wave_plan(total, info.canary, info.wave_size)
    lines.append(f"{len(sizes)} waves: {plan_text(sizes)}; {_options(info)}")
    if info.waiting:
        lines.append(f"waiting: {escape(info.waiting)}")
    if info.offline_skipped_count:
        lines.append(f"not reached: {_offline_text(info)} (--include-offline takes them)")
    if not info.dry_run:
        lines.append(f"follow it: schoolctl rollout status {info.rollout_id} --watch")
    return lines


def _duration(wave: RolloutWave, now: float) -> str:
    started = wave.started_at
    if started is None:
        return "-"
    if wave.finished_at is None:
        return f"{age(started, now)} so far"
    return age(started, wave.finished_at)


def _waves_table(info: RolloutInfo, now: float) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("WAVE", "HOSTS", "FAILED", "DURATION"):
        table.add_column(name, no_wrap=True, justify="left" if name == "DURATION" else "right")
    for w in info.waves:
        failed = f"[red]{w.failed}[/]" if w.failed else "0"
        table.add_row(str(w.wave), str(w.hosts), failed, _duration(w, now))
    return table


def _rc(h: RolloutHost) -> str:
    return str(h.rc) if h.rc is not None else "-"


def _failing_table(hosts: list[RolloutHost]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("DEVICE", "SCHOOL", "WAVE", "OUTCOME", "TASK", "RC"):
        table.add_column(name, no_wrap=True)
    table.add_column("MESSAGE")
    for h in hosts:
        table.add_row(
            escape(printable(h.device_id)),
            escape(printable(h.school_id)),
            str(h.wave or "-"),
            f"[red]{escape(h.outcome)}[/]",
            escape(printable(h.task)) or "-",
            _rc(h),
            escape(printable(h.message)) or "-",
        )
    return table


def _output(h: RolloutHost) -> list[RenderableType]:
    """The ends of a host's stderr and stdout, as plain text (never markup)."""
    parts: list[RenderableType] = []
    for name, text in (("stderr", h.stderr_tail), ("stdout", h.stdout_tail)):
        if text:
            parts += [f"[bold]{name}[/] (last lines):", Text(printable(text), style="dim")]
    return parts


def _outputs(hosts: list[RolloutHost], rollout_id: int) -> list[RenderableType]:
    """Each failing host's output ends, for the first OUTPUT_SHOWN that have some."""
    with_output = [h for h in hosts if h.stdout_tail or h.stderr_tail]
    parts: list[RenderableType] = []
    for h in with_output[:OUTPUT_SHOWN]:
        parts += ["", f"[bold]{escape(printable(h.device_id))}[/] rc {_rc(h)}", *_output(h)]
    more = len(with_output) - OUTPUT_SHOWN
    if more > 0:
        parts += ["", f"and {more} more: schoolctl rollout status {rollout_id} --host DEVICE"]
    return parts


def rollout_detail(info: RolloutInfo, now: float) -> Group:
    """One rollout for people: its state and why, counts, waves and failing hosts."""
    fields = Table(box=None, show_header=False, pad_edge=False)
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column()
    state = _state(info.state) + (f" ({escape(info.reason)})" if info.reason else "")
    rows = [
        ("rollout", f"{info.rollout_id} {escape(info.playbook)}"),
        ("state", state),
        ("selector", escape(info.selector)),
        ("waves", _options(info)),
        ("budget", budget_text(info)),
        ("hosts", counts_text(info)),
    ]
    if info.waiting:
        rows.append(("waiting", escape(info.waiting)))
    if info.offline_skipped_count:
        rows.append(("not reached", _offline_text(info)))
    if info.extra_vars_json and info.extra_vars_json != "{}":
        rows.append(("extra vars", escape(info.extra_vars_json)))
    created = info.created_at
    rows.append(("started", f"{iso(created) or '-'} by {escape(info.created_by) or '-'}"))
    finished = info.finished_at
    if finished is not None:
        rows.append(("finished", f"{iso(finished)} ({age(created, finished)} in all)"))
    for key, value in rows:
        fields.add_row(key, value)
    parts: list[RenderableType] = [fields]
    if info.waves:
        parts += ["", _waves_table(info, now)]
    failing = [h for h in info.hosts if h.outcome in _SHOWN]
    if failing:
        title = f"[bold]failed, unreachable or interrupted ({len(failing)})[/]"
        parts += ["", title, _failing_table(failing), *_outputs(failing, info.rollout_id)]
    return Group(*parts)


def host_detail(info: RolloutInfo) -> Group:
    """``rollout status ID --host DEVICE``: one host's whole stored result."""
    h = info.hosts[0] if info.hosts else RolloutHost()
    fields = Table(box=None, show_header=False, pad_edge=False)
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column()
    outcome = escape(h.outcome)
    style = _OUTCOME_STYLE.get(HostOutcome(h.outcome)) if h.outcome in _OUTCOMES else None
    started, finished = h.started_at, h.finished_at
    rows = [
        ("host", f"{escape(printable(h.device_id))} (school {escape(printable(h.school_id))})"),
        ("rollout", f"{info.rollout_id} {escape(info.playbook)}, {_state(info.state)}"),
        ("wave", str(h.wave or "-")),
        ("outcome", f"[{style}]{outcome}[/]" if style else outcome),
        ("task", escape(printable(h.task)) or "-"),
        ("message", escape(printable(h.message)) or "-"),
        ("rc", _rc(h)),
        ("started", iso(started) or "-"),
        ("finished", iso(finished) or "-"),
    ]
    for key, value in rows:
        fields.add_row(key, value)
    parts: list[RenderableType] = [fields]
    detail = _detail(h)
    tasks = detail.get("tasks", []) if isinstance(detail, dict) else []
    if tasks:
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("TASK")
        table.add_column("STATUS", no_wrap=True)
        for t in tasks:
            table.add_row(Text(printable(str(t.get("task", "")))), Text(str(t.get("status", ""))))
        left = detail.get("tasks_left_out")
        earlier = f", {left} earlier left out" if left else ""
        parts += ["", f"[bold]tasks ({len(tasks)}{earlier})[/]", table]
    if h.stdout_tail or h.stderr_tail:
        parts += ["", *_output(h)]
    result = detail.get("result") if isinstance(detail, dict) else None
    if result is not None:
        # JSON with ensure_ascii: every control character is an escape.
        text = json.dumps(result, indent=2, sort_keys=True, ensure_ascii=True)
        parts += ["", "[bold]result of the failing task[/]:", Text(text)]
    return Group(*parts)


def rollouts_table(infos: list[RolloutInfo], now: float) -> Table:
    """One row per rollout, newest first as the controller sends them."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("ID", "PLAYBOOK", "STATE", "HOSTS", "FAILED", "WAVES", "STARTED", "BY"):
        table.add_column(name, no_wrap=True)
    table.add_column("SELECTOR")
    table.add_column("WHY")
    for info in infos:
        settled, total = progress(info)
        failed = sum(info.counts.get(k, 0) for k in _BAD)
        created = info.created_at
        table.add_row(
            str(info.rollout_id),
            escape(info.playbook),
            _state(info.state),
            f"{settled}/{total}",
            f"[red]{failed}[/]" if failed else "0",
            str(len(info.waves)),
            f"{age(created, now)} ago" if created is not None else "-",
            escape(info.created_by),
            escape(info.selector),
            escape(info.reason or info.waiting),
        )
    return table


def windows_json(w: SchoolWindows) -> dict[str, Any]:
    """A school's maintenance windows."""
    return {"school_id": w.school_id, "windows": list(w.windows)}


def windows_table(schools: list[SchoolWindows]) -> Table:
    """One row per school."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("SCHOOL", no_wrap=True)
    table.add_column("WINDOWS")
    for w in schools:
        table.add_row(escape(w.school_id), escape("; ".join(w.windows)) or "any time")
    return table
