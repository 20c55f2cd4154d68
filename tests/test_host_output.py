"""What a rollout keeps of a host's output: the failing task's return code and the ends
of its stdout and stderr (bounded, escaped), and the host's tasks and result as bounded
JSON, from ansible-runner's events."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.rollouts.events import WaveTally
from inventory.host_output import (
    DETAIL_BYTES,
    TAIL_BYTES,
    TAIL_LINES,
    bounded_detail,
    detail_json,
    printable,
    tail,
)
from inventory.rollouts import HostOutcome


def _event(kind: str, host: str, task: str, **data: Any) -> dict[str, Any]:
    """An event as ansible-runner hands it to event_handler (fields read kept)."""
    return {
        "event": kind,
        "created": "2026-11-30T11:49:03.539090+00:00",
        "event_data": {"host": host, "task": task, **data},
    }


def _stats(**counts: dict[str, int]) -> dict[str, Any]:
    keys = ("changed", "dark", "failures", "ok", "processed", "rescued")
    return {"event": "playbook_on_stats", "event_data": {k: counts.get(k, {}) for k in keys}}


def test_control_characters_are_escaped_and_text_kept() -> None:
    assert printable("ok\tfine\nnext") == "ok\tfine\nnext"
    assert printable("\x1b[2J\x07\x00\x7f") == "\\x1b[2J\\x07\\x00\\x7f"
    # A right-to-left override could make a line read as something else.
    assert printable("abc\u202edef") == "abc\\u202edef"
    assert printable("école ✓") == "école ✓"


def test_a_tail_is_the_last_lines_within_its_bytes() -> None:
    text = "\n".join(f"line {n}" for n in range(100)) + "\n"
    assert tail(text).splitlines() == [f"line {n}" for n in range(80, 100)]
    assert tail(["a", "b"]) == "a\nb"
    assert tail(None) == "" and tail("") == ""
    long = tail("x" * 10_000)
    assert long.startswith("…") and len(long.encode()) <= TAIL_BYTES
    # A multi-byte character cut in two is dropped, not half printed.
    assert tail("é" * 2000).encode().decode() == tail("é" * 2000)


@given(st.text(max_size=5000))
def test_any_output_gives_a_bounded_printable_tail(text: str) -> None:
    kept = tail(text)
    assert len(kept.encode()) <= TAIL_BYTES
    assert len(kept.splitlines()) <= TAIL_LINES
    assert not any(c in kept for c in "\x1b\x07\x00\x9b\u202e")
    assert tail(kept) == kept, "bounding again changes nothing"


def test_a_detail_is_json_within_its_bytes() -> None:
    tasks = [(f"task {n}", "ok") for n in range(500)]
    result = {"rc": 2, "stdout": "y" * 100_000, "invocation": {"module_args": {"pw": "s"}}}
    data = json.loads(detail_json(tasks, result))
    assert len(data["tasks"]) <= 100 and data["tasks_left_out"] >= 400
    assert data["tasks"][-1] == {"task": "task 499", "status": "ok"}
    assert data["result"]["rc"] == 2 and "invocation" not in data["result"]
    assert len(data["result"]["stdout"]) <= 2048
    assert len(detail_json(tasks, result)) <= DETAIL_BYTES
    huge = {f"k{n}": "z" * 2000 for n in range(40)}
    assert "left_out" in json.loads(detail_json([], huge))["result"]
    assert bounded_detail("") == ""
    assert bounded_detail('{"a": "\\u001b"}') == '{"a": "\\u001b"}'


def test_the_tally_keeps_the_failing_tasks_rc_output_and_the_hosts_tasks() -> None:
    failure = {
        "msg": "non-zero return code",
        "rc": 100,
        "stdout": "\n".join(f"out {n}" for n in range(30)),
        "stderr": "E: Unable to locate package \x1b[31mfoo\n",
        "cmd": "apt-get install foo",
        "invocation": {"module_args": {"_raw_params": "apt-get install foo"}},
    }
    events = [
        _event("runner_on_start", "d1", "Folder"),
        _event("runner_on_ok", "d1", "Folder", res={"changed": True}),
        _event("runner_on_ok", "d2", "Folder", res={"changed": False}),
        _event("runner_on_skipped", "d1", "Only on servers"),
        _event("runner_on_failed", "d1", "Ignored", res={"rc": 1}, ignore_errors=True),
        _event("runner_on_failed", "d1", "Install", res=failure),
        _stats(
            changed={"d1": 1},
            failures={"d1": 1},
            ok={"d1": 1, "d2": 1},
            processed={"d1": 1, "d2": 1},
        ),
    ]
    tally = WaveTally(3, {"d1": "s1", "d2": "s1"})
    for event in events:
        tally.feed(event)
    results = tally.results(["d1", "d2"])
    failed, ok = results["d1"], results["d2"]
    assert (failed.outcome, failed.task, failed.rc) == (HostOutcome.FAILED, "Install", 100)
    assert failed.stdout.splitlines() == [f"out {n}" for n in range(10, 30)]
    assert failed.stderr == "E: Unable to locate package \\x1b[31mfoo"
    detail = json.loads(failed.detail)
    assert detail["tasks"] == [
        {"task": "Folder", "status": "changed"},
        {"task": "Only on servers", "status": "skipped"},
        {"task": "Ignored", "status": "ignored"},
        {"task": "Install", "status": "failed"},
    ]
    assert detail["result"]["cmd"] == "apt-get install foo"
    assert "invocation" not in detail["result"]
    assert (ok.outcome, ok.rc, ok.stdout, ok.stderr) == (HostOutcome.OK, None, "", "")
    assert json.loads(ok.detail) == {"tasks": [{"task": "Folder", "status": "ok"}]}


def test_a_loops_failed_item_gives_the_rc_and_output() -> None:
    loop = {
        "msg": "One or more items failed",
        "results": [
            {"rc": 0, "stdout": "fine", "failed": False},
            {"rc": 3, "stdout": "", "stderr": "item broke", "failed": True},
        ],
    }
    tally = WaveTally()
    first = tally.feed(_event("runner_on_failed", "d1", "Loop", res=loop))
    assert first is not None
    assert (first.rc, first.stderr) == (3, "item broke")


def test_an_abort_interrupts_hosts_a_task_had_begun_on_and_cancels_the_rest() -> None:
    tally = WaveTally()
    tally.feed(_event("runner_on_start", "d1", "Take a while"))
    results = tally.results(["d1", "d2"], cancelled=True)
    assert results["d1"].outcome is HostOutcome.INTERRUPTED
    assert results["d1"].task == "Take a while"
    assert results["d2"].outcome is HostOutcome.CANCELLED
    assert results["d1"].finished_at is None and results["d2"].finished_at is None
