"""schoolctl rollout and maintenance without a controller: flags refused before anything
is sent, what people and scripts are shown, and the help text.

Commands run through cli.main.run, as the installed schoolctl does, so a refusal is
seen as the user sees it: one line on stderr and the exit code."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console, RenderableType
from typer.testing import CliRunner

from cli import render_rollouts as render
from cli.client.rollout_values import RolloutInfo, SchoolWindows
from cli.client.rollouts import rollout_from_pb
from cli.errors import RequestRefused
from cli.extra_vars import parse_extra_vars
from cli.main import app, run
from cli.rollouts import exit_code
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import timestamp

# Nothing listens on port 1: a refusal that reached the network would exit 3, not 2.
NO_CONTROLLER = "127.0.0.1:1"


@dataclass
class Result:
    code: int
    out: str
    err: str


def ctl(*args: str, stdin: str | None = None) -> Result:
    """schoolctl ARGS in-process, with no config file and a token no controller knows."""
    runner = CliRunner()
    env = {"SCHOOLCTL_CONFIG": os.devnull, "SCHOOLCTL_TOKEN": "sfu_unknown", "COLUMNS": "200"}
    argv = ["--controller", NO_CONTROLLER, "--timeout", "1", *args]
    with runner.isolation(input=stdin, env=env) as (out, err, _):
        try:
            run(functools.partial(app, args=argv, prog_name="schoolctl"))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 0
        return Result(code, out.getvalue().decode(), err.getvalue().decode())


def start(*args: str) -> Result:
    return ctl("rollout", "start", "timesync.yml", *args)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--select", ""], "--select: the selector is empty"),
        (["--select", "colour=red"], "--select: selector key 'colour'"),
        (["--select", "school"], "--select: selector part 'school': write key=value"),
        (["--select", "kind=toaster"], "--select: selector kind 'toaster'"),
        (["--select", "school=a b"], "--select: selector school 'a b' is not a valid id"),
        (["--select", "school=1", "--canary", "0"], "--canary '0': at least one host"),
        (["--select", "school=1", "--canary", "x"], "--canary 'x': write a number of hosts"),
        (["--select", "school=1", "--wave-size", "150%"], "--wave-size '150%': a percentage"),
        (["--select", "school=1", "--max-fail", "lots"], "--max-fail 'lots': write a percentage"),
        (["--select", "school=1", "--max-fail", "101"], "--max-fail '101': a percentage from"),
        (["--select", "school=1", "--gate", "tests"], "--gate 'tests': the only gate is 'lessons'"),
        (
            ["--select", "school=1", "--extra-vars", "{bad"],
            "--extra-vars: not valid YAML or JSON: ",
        ),
        (
            ["--select", "school=1", "--extra-vars", "[1, 2]"],
            "--extra-vars must be a mapping of names to values",
        ),
        (
            ["--select", "school=1", "--extra-vars", "ntp=pool"],
            "--extra-vars must be a mapping of names to values",
        ),
        (["--select", "school=1", "--extra-vars", ""], "--extra-vars must be a mapping"),
        (["--select", "school=1", "--extra-vars", "ntp-server: x"], "name 'ntp-server'"),
        (["--select", "school=1", "--extra-vars", "1: x"], "--extra-vars name 1:"),
        (["--select", "school=1", "--extra-vars", "x: .nan"], "--extra-vars: Out of range"),
        (["--select", "school=1", "--extra-vars", "x: !!set {a}"], "set values cannot be sent"),
        (["--select", "school=1", "--extra-vars", "[" * 5000], "--extra-vars: nested too deep"),
        (
            ["--select", "school=1", "--extra-vars", "@/nonexistent/vars.yml"],
            "--extra-vars @/nonexistent/vars.yml: No such file or directory",
        ),
    ],
)
def test_start_refuses_bad_flags_in_one_line(args: list[str], says: str) -> None:
    result = start(*args)
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("schoolctl: "), lines
    assert says in lines[0]


def _one_line_refusal(result: Result, says: str) -> None:
    assert result.code == 2, result
    assert result.err.count("\n") == 1, result.err
    assert says in result.err
    assert "Traceback" not in result.err


def test_extra_vars_file_too_big_or_a_yaml_bomb(tmp_path: Path) -> None:
    big = tmp_path / "big.yml"
    big.write_text("x: " + "a" * 70_000 + "\n")
    _one_line_refusal(
        start("--select", "school=1", "--extra-vars", f"@{big}"), "larger than 64 KiB"
    )
    # A few lines whose aliases would make gigabytes of JSON.
    bomb = tmp_path / "bomb.yml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\n")
    _one_line_refusal(
        start("--select", "school=1", "--extra-vars", f"@{bomb}"), "more than 64 KiB as JSON"
    )


def test_other_commands_refuse_in_one_line() -> None:
    # No terminal to ask: abort wants --yes rather than guessing.
    _one_line_refusal(ctl("rollout", "abort", "7"), "not aborting rollout 7 without --yes")
    _one_line_refusal(ctl("rollout", "retry", "7"), "retry needs --failed")
    _one_line_refusal(
        ctl("maintenance", "set", "--school", "s1"), "give the school's windows, or --clear"
    )
    _one_line_refusal(
        ctl("maintenance", "set", "--school", "s1", "--clear", "daily 00:00-24:00"),
        "not both",
    )
    _one_line_refusal(
        ctl("maintenance", "set", "--school", "s1", "someday 18:00-06:00"),
        "window 'someday 18:00-06:00': days 'someday'",
    )
    _one_line_refusal(
        ctl("maintenance", "set", "--school", "s1", "mon-fri 18:00"), "write DAYS HH:MM-HH:MM"
    )


def test_a_good_start_goes_to_the_controller() -> None:
    """The checks let good flags through: the next thing is the (absent) controller."""
    vars_json = '{"ntp": {"servers": ["10.0.0.1"], "big": 1e+16}}'
    result = start(
        "--select",
        "school=1234,kind=panel|laptop,label.grade=5",
        "--canary",
        "2%",
        "--extra-vars",
        vars_json,
        "--gate",
        "lessons",
        "--dry-run",
    )
    assert result.code == 3, result
    assert "cannot reach the controller at 127.0.0.1:1" in result.err


def test_extra_vars_yaml_and_json_become_one_json_object(tmp_path: Path) -> None:
    path = tmp_path / "vars.yml"
    path.write_text("ntp_servers:\n  - 10.0.0.1\nsince: 2026-09-01\nbig: 1e+16\n")
    assert json.loads(parse_extra_vars(f"@{path}")) == {
        "ntp_servers": ["10.0.0.1"],
        "since": "2026-09-01",
        "big": "1e+16",  # YAML 1.1: a string, as ansible would read it too
    }
    assert json.loads(parse_extra_vars('{"big": 1e+16}')) == {"big": 1e16}
    with pytest.raises(RequestRefused, match="must be a mapping"):
        parse_extra_vars("- a\n- b\n")


_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(st.dictionaries(_NAMES, _VALUES, max_size=6))
def test_any_json_mapping_goes_through_unchanged(data: dict[str, Any]) -> None:
    assert json.loads(parse_extra_vars(json.dumps(data))) == data


@given(
    st.integers(1, 5000),
    st.sampled_from(["1", "3", "1%", "5%", "50%"]),
    st.sampled_from(["1", "10", "10%", "100%"]),
)
def test_wave_plan_covers_every_host_canary_first(total: int, canary: str, wave: str) -> None:
    plan = render.wave_plan(total, canary, wave)
    assert sum(plan) == total
    assert all(size >= 1 for size in plan)
    assert plan == sorted(plan) or plan[-1] < plan[-2]  # grows, but for the remainder


def test_wave_plan_text() -> None:
    assert render.wave_plan(240, "1", "10%") == [1, 2, 4, 8, 16, *[24] * 8, 17]
    assert render.plan_text(render.wave_plan(240, "1", "10%")) == (
        "1, 2, 4, 8, 16, 24 (8 times), 17"
    )
    assert render.plan_text([5, 5]) == "5, 5"
    assert render.plan_text([]) == "none"


def _info_pb(state: str = "halted") -> admin_pb2.RolloutInfo:
    """A rollout of 240 panels halted in its fourth wave, as the controller sends it."""
    info = admin_pb2.RolloutInfo(
        rollout_id=12,
        playbook="timesync.yml",
        selector="school=1234,kind=panel",
        canary="1",
        wave_size="10%",
        max_fail=5.0,
        gate_lessons=True,
        state=state,
        reason="wave 4: 13 of 240 hosts failed or unreachable, over the --max-fail budget "
        "of 12 (5%)",
        created_by="alice",
        created_at=timestamp(1_790_000_000),
        updated_at=timestamp(1_790_000_900),
        counts={
            "pending": 225,
            "running": 0,
            "ok": 10,
            "changed": 3,
            "failed": 1,
            "unreachable": 1,
            "cancelled": 0,
        },
        waiting="room 101 has a lesson until 10:45",
        extra_vars_json='{"ntp": "10.0.0.1"}',
        fail_budget=12,
        fail_budget_used=2,
    )
    for n, hosts, failed in ((1, 1, 0), (2, 2, 0), (3, 4, 0), (4, 8, 2)):
        wave = info.waves.add(wave=n, hosts=hosts, failed=failed)
        wave.started_at.CopyFrom(timestamp(1_790_000_000 + 100 * n))
        if n < 4:
            wave.finished_at.CopyFrom(timestamp(1_790_000_000 + 100 * n + 65))
    info.hosts.add(device_id="panel-1", school_id="1234", wave=1, outcome="changed")
    info.hosts.add(
        device_id="panel-9",
        school_id="1234",
        wave=4,
        outcome="failed",
        task="chrony : restart chronyd",
        message="Unable to restart service chronyd: [bad unit]",
        rc=1,
        stderr_tail="Job for chronyd.service failed.\n[red]See journalctl -xe[/red]\x1b[2J",
        stdout_tail="",
    )
    info.hosts.add(
        device_id="panel-10",
        school_id="1234",
        wave=4,
        outcome="unreachable",
        task="Gathering Facts",
        message="ssh: connect to host 10.1.4.10 port 22: No route to host",
    )
    info.hosts.add(device_id="panel-11", school_id="1234", wave=0, outcome="pending")
    return info


def _info(state: str = "halted") -> RolloutInfo:
    """That rollout as schoolctl's client answers with it."""
    return rollout_from_pb(_info_pb(state))


def _text(thing: RenderableType) -> str:
    console = Console(file=StringIO(), width=200, color_system=None)
    console.print(thing)
    assert isinstance(console.file, StringIO)
    return console.file.getvalue()


def test_people_see_state_counts_waves_and_failing_hosts() -> None:
    text = _text(render.rollout_detail(_info(), now=1_790_000_500))
    assert "halted (wave 4: 13 of 240 hosts failed or unreachable, over the --max-fail" in text
    budget = "budget 10 of 12 hosts may still fail (5% of 240 hosts; 2 failed or unreachable)"
    assert budget in " ".join(text.split())
    assert "240: 225 pending, 10 ok, 3 changed, 1 failed, 1 unreachable" in text
    assert "waiting room 101 has a lesson until 10:45" in " ".join(text.split())
    assert "canary 1, then doubling up to 10% a wave" in text
    assert "halts if lessons fail more often" in text
    assert "started by alice" not in text and "by alice" in text
    lines = text.splitlines()
    header = next(
        i
        for i, line in enumerate(lines)
        if line.split()[:4] == ["WAVE", "HOSTS", "FAILED", "DURATION"]
    )
    assert lines[header + 1].split() == ["1", "1", "0", "1m"]
    assert lines[header + 4].split() == ["4", "8", "2", "1m", "so", "far"]
    assert "failed, unreachable or interrupted (2)" in text
    failing = [line for line in lines if line.startswith("panel-") and " rc " not in line]
    assert len(failing) == 2
    assert "chrony : restart chronyd" in failing[0]
    assert "chrony : restart chronyd  1   Unable" in failing[0], "the return code"
    # The end of the failing task's stderr, as text: no markup, no terminal escape.
    assert "panel-9 rc 1" in text
    assert "Job for chronyd.service failed." in text
    assert "[red]See journalctl -xe[/red]\\x1b[2J" in text
    assert "\x1b" not in text
    # Square brackets in a message are text, not markup.
    assert "Unable to restart service chronyd: [bad unit]" in failing[0]
    assert "Gathering Facts" in failing[1] and "No route to host" in failing[1]


def test_scripts_get_json_with_every_field() -> None:
    data = json.loads(json.dumps(render.rollout_json(_info())))
    assert data["rollout_id"] == 12
    assert data["state"] == "halted" and data["final"] is True
    assert data["reason"].startswith("wave 4: 13 of 240 hosts")
    assert data["counts"]["failed"] == 1 and data["counts"]["cancelled"] == 0
    assert (data["total"], data["settled"]) == (240, 15)
    assert data["extra_vars"] == {"ntp": "10.0.0.1"}
    assert data["waiting"] == "room 101 has a lesson until 10:45"
    assert data["created_at"] == "2026-09-21T14:13:20+00:00"
    assert data["finished_at"] is None
    assert data["waves"][3] == {
        "wave": 4,
        "hosts": 8,
        "failed": 2,
        "started_at": "2026-09-21T14:20:00+00:00",
        "finished_at": None,
    }
    assert data["fail_budget"] == {
        "max_fail": 5.0,
        "allowed": 12,
        "used": 2,
        "left": 10,
        "passed": False,
    }
    failed = [h for h in data["hosts"] if h["outcome"] == "failed"]
    assert failed == [
        {
            "device_id": "panel-9",
            "school_id": "1234",
            "wave": 4,
            "outcome": "failed",
            "task": "chrony : restart chronyd",
            "message": "Unable to restart service chronyd: [bad unit]",
            "rc": 1,
            "stdout_tail": "",
            "stderr_tail": "Job for chronyd.service failed.\n[red]See journalctl -xe[/red]\\x1b[2J",
            "started_at": None,
            "finished_at": None,
        }
    ]
    assert data["hosts"][0]["rc"] is None
    assert data["hosts"][-1]["wave"] is None
    assert sum(data["plan"]) == 240


def test_start_says_id_hosts_and_plan_and_a_dry_run_says_nothing_started() -> None:
    info = _info_pb("running")
    del info.hosts[:]
    for i in range(30):
        info.hosts.add(device_id=f"p{i}", school_id="s1" if i < 20 else "s2", wave=int(i == 0))
    info.counts.clear()
    info.counts["pending"] = 30
    lines = render.started_lines(rollout_from_pb(info))
    assert lines[0] == "rollout 12 started: timesync.yml to 30 host(s) (school=1234,kind=panel)"
    assert "hosts by school: s1: 20, s2: 10" in lines
    assert "first wave (canary): p0" in lines
    assert any(line.startswith("11 waves: 1, 2, 3 (9 times); canary 1") for line in lines)
    assert lines[-1] == "follow it: schoolctl rollout status 12 --watch"
    info.dry_run = True
    info.rollout_id = 0
    lines = render.started_lines(rollout_from_pb(info))
    assert lines[0].startswith("dry run, nothing was started: timesync.yml would go to 30 host(s)")
    assert not any("follow it" in line for line in lines)


def test_list_and_windows_tables() -> None:
    done = _info_pb("done")
    done.rollout_id = 11
    done.reason = ""
    text = _text(render.rollouts_table([_info(), rollout_from_pb(done)], now=1_790_003_600))
    row = next(line for line in text.splitlines() if line.startswith("12 "))
    assert row.split()[:8] == ["12", "timesync.yml", "halted", "15/240", "2", "4", "1h", "ago"]
    assert "room 101 has a lesson" in next(
        line for line in text.splitlines() if line.startswith("11 ")
    )
    windows = [SchoolWindows("s1", ("mon-fri 18:00-06:00", "sat 00:00-24:00"))]
    assert "s1      mon-fri 18:00-06:00; sat 00:00-24:00" in _text(render.windows_table(windows))
    assert render.windows_json(windows[0]) == {
        "school_id": "s1",
        "windows": ["mon-fri 18:00-06:00", "sat 00:00-24:00"],
    }


def _ended(state: str, **counts: int) -> RolloutInfo:
    return rollout_from_pb(admin_pb2.RolloutInfo(state=state, counts={"ok": 3, **counts}))


def test_exit_code_tells_scripts_how_it_ended() -> None:
    states = ("done", "running", "paused", "halted", "aborted", "done-unreached")
    assert [exit_code(_ended(s)) for s in states] == [0, 0, 0, 1, 1, 7]
    assert [render.is_final(s) for s in states] == [True, False, False, True, True, True]
    # Failed hosts within the --max-fail budget: done, but not a success.
    assert exit_code(_ended("done", failed=1)) == 1
    assert exit_code(_ended("done-unreached", failed=1, unreachable=1)) == 1
    assert exit_code(_ended("done-unreached", unreachable=1)) == 7
    assert render.progress(_info()) == (15, 240)
    assert render.progress_note(_info()).startswith("halted: wave 4: 13 of 240 hosts")
    assert render.progress_note(_info("running")) == "running: room 101 has a lesson until 10:45"


def test_help_explains_selector_waves_school_day_and_exit_codes() -> None:
    for command in (["rollout", "--help"], ["rollout", "start", "--help"]):
        result = ctl(*command)
        assert result.code == 0, result
        text = " ".join(result.out.split())
        for key in ("school", "room", "kind", "os", "device", "label.NAME"):
            assert f"{key} " in text or f"{key}," in text, key
        assert "'|' separates alternatives" in text
        assert "the canary first (--canary), then each wave twice the one before" in text
        assert "--max-fail is a budget for the whole rollout" in text
        assert "checked at every wave" in text
        assert "devices in a room with a lesson scheduled are not changed" in text
        assert "maintenance windows" in text
    text = " ".join(ctl("rollout", "--help").out.split())
    assert "Exit codes: 0 ok; 1 the rollout halted or was aborted, or ended with failed" in text
    assert "7 the rollout ended with hosts not reached (done-unreached" in text
    status = " ".join(ctl("rollout", "status", "--help").out.split())
    assert "Exits 0 when done with every host reached and none failed" in status
    assert "7 when it ended with hosts not reached (done-unreached" in status
    assert "--host" in status and "whole stored result" in status
    retry = " ".join(ctl("rollout", "retry", "--help").out.split())
    assert "--failed" in retry and "--not-reached" in retry and "interrupted" in retry
    start_help = " ".join(ctl("rollout", "start", "--help").out.split())
    assert "The budget of the whole rollout" in start_help


def _host_info() -> RolloutInfo:
    info = _info_pb()
    del info.hosts[:]
    detail = {
        "tasks": [
            {"task": "chrony : install", "status": "ok"},
            {"task": "chrony : restart chronyd", "status": "failed"},
        ],
        "result": {"rc": 1, "msg": "Unable to restart\u001b[31m", "stderr": "bad unit"},
    }
    host = info.hosts.add(
        device_id="panel-9",
        school_id="1234",
        wave=4,
        outcome="failed",
        task="chrony : restart chronyd",
        message="Unable to restart service chronyd: [bad unit]",
        rc=1,
        stderr_tail="bad unit",
        stdout_tail="line 1\nline 2",
        detail_json=json.dumps(detail),
    )
    host.started_at.CopyFrom(timestamp(1_790_000_400))
    host.finished_at.CopyFrom(timestamp(1_790_000_410))
    return rollout_from_pb(info)


def test_one_hosts_whole_result_for_people_and_scripts() -> None:
    text = _text(render.host_detail(_host_info()))
    assert "panel-9 (school 1234)" in text
    flat = " ".join(text.split())
    assert "message Unable to restart service chronyd: [bad unit] rc 1 started" in flat
    assert "chrony : install" in text and "ok" in text
    assert "stderr (last lines):" in text and "bad unit" in text
    assert "stdout (last lines):" in text and "line 2" in text
    assert "result of the failing task" in text
    assert '"msg": "Unable to restart\\u001b[31m"' in text
    assert "\x1b" not in text
    data = json.loads(json.dumps(render.host_json(_host_info())))
    assert data["rollout_id"] == 12 and data["state"] == "halted"
    assert data["host"]["rc"] == 1
    assert data["host"]["detail"]["tasks"][1] == {
        "task": "chrony : restart chronyd",
        "status": "failed",
    }
    assert data["host"]["started_at"] == "2026-09-21T14:20:00+00:00"


def test_status_host_and_retry_refuse_in_one_line() -> None:
    both = ctl("rollout", "status", "3", "--host", "panel-1", "--watch")
    _one_line_refusal(both, "--host shows one host's stored result")
    neither = ctl("rollout", "retry", "3")
    _one_line_refusal(neither, "retry needs --failed")
    assert "--not-reached" in neither.err
