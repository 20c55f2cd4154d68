"""The rollouts-over-replicas benchmark's own arithmetic (bench/rollout_replicas.py):
what it reads from a controller's log, how long two controllers ran slices at once,
the rounds' order, the slice size and the ratio; and the CPU of a process tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.rollout_lab import PLAYBOOK, TASKS, engine_control_dirs
from bench.rollout_replicas import (
    ControllerFigures,
    RoundResult,
    SliceRun,
    orders,
    overlap,
    parse_args,
    playbook,
    slice_hosts_for,
    slice_runs,
    solved,
    speedups,
    task_count,
)
from bench.scale_pg import ProcStat, subtree_cpu
from controller.rollouts.slices import cut

LOG = """\
2026-12-07 20:51:40,100 INFO controller.leases.keeper: lease rollouts taken epoch=1 holder=vm:1:a
2026-12-07 20:51:41,000 INFO controller.rollouts.slice_runner: rollout 1 wave 1 slice 1 \
started hosts=10 strategy=mitogen by=vm:1:a
2026-12-07 20:51:41,500 INFO controller.rollouts.slice_runner: rollout 2 wave 1 slice 1 \
started hosts=3 strategy=linear by=vm:1:a
2026-12-07 20:51:45,250 INFO controller.rollouts.slice_runner: rollout 1 wave 1 slice 1 \
finished hosts=10 failed=0
2026-12-07 20:51:45,300 INFO controller.rollouts.slice_runner: rollout 1 wave 1 slice 3 \
started hosts=9 strategy=mitogen by=vm:1:a
"""


def test_a_controller_s_slices_are_read_from_its_log_for_one_rollout() -> None:
    runs = slice_runs(LOG, 1)
    assert [(r.wave, r.slice, r.hosts, r.by) for r in runs] == [
        (1, 1, 10, "vm:1:a"),
        (1, 3, 9, "vm:1:a"),
    ]
    first, running = runs
    assert first.finished is not None and first.finished - first.started == pytest.approx(4.25)
    # Begun, not finished when the log was read.
    assert running.finished is None


def test_a_slice_run_again_after_a_lost_claim_counts_twice() -> None:
    again = LOG + (
        "2026-12-07 20:52:00,000 INFO controller.rollouts.slice_runner: rollout 1 wave 1 "
        "slice 1 started hosts=10 strategy=mitogen by=vm:1:a\n"
    )
    assert [r.slice for r in slice_runs(again, 1)] == [1, 3, 1]


def _run(start: float, end: float | None) -> SliceRun:
    return SliceRun(1, 1, 1, "x", start, end)


def test_together_is_the_time_both_controllers_ran_a_slice() -> None:
    a = [_run(0, 4), _run(4, 9)]
    b = [_run(1, 3), _run(5, 12)]
    assert overlap(a, b) == 2 + 4
    assert overlap(a, []) == 0
    # One not finished is left out rather than guessed.
    assert overlap([_run(0, None)], b) == 0


def test_the_rounds_alternate_which_setup_goes_first() -> None:
    assert orders(3) == [(1, 2), (2, 1), (1, 2)]


@pytest.mark.parametrize(("hosts", "wanted"), [(40, 4), (32, 4), (30, 4), (3, 3)])
def test_the_default_slice_size_cuts_the_wave_into_four_slices_at_most(
    hosts: int, wanted: int
) -> None:
    assert len(cut([str(i) for i in range(hosts)], slice_hosts_for(hosts, 4))) == wanted


def test_the_slice_size_defaults_to_a_quarter_of_the_hosts() -> None:
    assert parse_args(["--hosts", "40"]).slice_hosts == 10
    assert parse_args(["--hosts", "40", "--slice-hosts", "7"]).slice_hosts == 7
    with pytest.raises(SystemExit):
        parse_args(["--hosts", "1"])


def test_the_latency_flags_default_to_none_and_refuse_negatives() -> None:
    args = parse_args(["--hosts", "24", "--host-seconds", "3", "--forks", "2"])
    assert (args.host_seconds, args.forks) == (3.0, 2)
    assert (parse_args([]).host_seconds, parse_args([]).forks) == (0.0, 0)
    for bad in (["--forks", "-1"], ["--host-seconds", "-0.5"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_a_slow_host_is_a_last_task_that_waits_on_it_and_changes_nothing() -> None:
    assert playbook(0) == PLAYBOOK
    tasks = yaml.safe_load(playbook(3))[0]["tasks"]
    assert len(tasks) == TASKS + 1 == task_count(3)
    assert tasks[:TASKS] == yaml.safe_load(PLAYBOOK)[0]["tasks"]
    assert tasks[-1]["ansible.builtin.command"] == "sleep 3"
    assert tasks[-1]["changed_when"] is False
    assert "sleep 0.5" in playbook(0.5)
    assert task_count(0) == TASKS


def _round(n: int, replicas: int, seconds: float) -> RoundResult:
    return RoundResult(
        round=n,
        replicas=replicas,
        hosts=40,
        slice_hosts=10,
        seconds=seconds,
        start_seconds=1.0,
        hosts_ok=40,
        markers=40,
        controllers=[ControllerFigures(cpu=1.0)] * replicas,
        together=0.0,
        first_slice=None,
        tail=None,
        sshd_cpu=0.0,
        busy_cpu=0.0,
        busy_seconds=1.0,
        load_before=0.0,
        load_after=0.0,
    )


def test_the_cpu_is_solved_into_a_cost_per_controller_and_per_host_task() -> None:
    ones = [_round(n, 1, 30) for n in (1, 2, 3)]
    twos = [_round(n, 2, 30) for n in (1, 2, 3)]
    for r, cpu in zip(ones, (16.0, 15.0, 99.0), strict=True):
        r.controllers = [ControllerFigures(cpu=cpu)]
    for r, cpu in zip(twos, (9.5, 10.0, 10.5), strict=True):
        r.controllers = [ControllerFigures(cpu=cpu), ControllerFigures(cpu=cpu)]
    # Medians 16 and 20: 4 per controller, (16 - 4) / 80 per host-task.
    assert "k = 4.0 core-s per controller" in solved(ones, twos)
    assert "h = 0.150 core-s per host-task** (80 host-tasks)" in solved(ones, twos)
    # A playbook of three tasks: 120 host-tasks.
    for r in [*ones, *twos]:
        r.tasks = 3
    assert "h = 0.100 core-s per host-task** (120 host-tasks)" in solved(ones, twos)


def test_the_speedup_is_taken_within_each_round() -> None:
    results = [_round(1, 1, 30), _round(1, 2, 20), _round(2, 2, 25), _round(2, 1, 25)]
    assert speedups(results) == [1.5, 1.0]
    # A round with one setup only has no ratio.
    assert speedups([*results, _round(3, 2, 10)]) == [1.5, 1.0]


def test_a_tree_s_cpu_counts_every_depth_once() -> None:
    stats = [
        ProcStat(pid=10, ppid=1, own=1.0, children=0.5),  # the controller
        ProcStat(pid=11, ppid=10, own=2.0, children=3.0),  # a wave worker
        ProcStat(pid=12, ppid=11, own=4.0, children=0.0),  # its zygote
        ProcStat(pid=13, ppid=12, own=5.0, children=0.25),  # an ansible-playbook
        ProcStat(pid=20, ppid=1, own=70.0, children=0.0),  # another controller
    ]
    assert subtree_cpu(10, stats) == 1.0 + 0.5 + 2.0 + 3.0 + 4.0 + 5.0 + 0.25
    assert subtree_cpu(99, stats) == 0.0
    # The ansible-playbook exits and the zygote waits for it: counted once still.
    after = [*stats[:2], ProcStat(12, 11, 4.0, 5.25), stats[4]]
    assert subtree_cpu(10, after) == subtree_cpu(10, stats)


def test_each_slice_s_ssh_control_folder_is_found_in_its_recorded_environment(
    tmp_path: Path,
) -> None:
    for n, where in ((1, "/srv/cp-a"), (2, "/srv/cp-b"), (3, "/srv/cp-a")):
        run = tmp_path / "7" / f"wave-1-slice-{n}" / "artifacts" / f"id{n}"
        run.mkdir(parents=True)
        env = {"ANSIBLE_SSH_CONTROL_PATH_DIR": where, "ANSIBLE_FORKS": "4"}
        (run / "command").write_text(json.dumps({"env": env}))
    # Mitogen's slices record none.
    other = tmp_path / "7" / "wave-2-slice-1" / "artifacts" / "x"
    other.mkdir(parents=True)
    (other / "command").write_text(json.dumps({"env": {}}))
    assert engine_control_dirs(tmp_path, 7) == {Path("/srv/cp-a"), Path("/srv/cp-b")}
    assert engine_control_dirs(tmp_path, 8) == set()
