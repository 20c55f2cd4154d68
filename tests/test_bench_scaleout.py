"""The scale-out benchmark's own arithmetic (bench/scale_*.py): what it reads from /proc,
how it spreads devices over replicas, when a storm is over, the costs it solves."""

from __future__ import annotations

import os

import pytest

from bench.scale_ingest import assign
from bench.scale_pg import ProcStat, parse_stat, tree_cpu
from bench.scale_report import cell, solve_costs
from bench.scale_storm import back_times, noticed_times
from bench.scaleout import parse_args

TICKS = os.sysconf("SC_CLK_TCK")


def test_a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    times = f"{TICKS * 3} {TICKS} {TICKS * 5} {TICKS * 2}"
    line = f"4242 (postgres: x (y)) S 17 4242 4242 0 -1 4194560 1 2 3 4 {times} 20 0 1 0 99 0\n"
    assert parse_stat(line) == ProcStat(pid=4242, ppid=17, own=4.0, children=7.0)


def test_the_servers_cpu_is_its_own_its_childrens_and_their_waited_for_time() -> None:
    stats = [
        ProcStat(pid=100, ppid=1, own=1.0, children=10.0),  # the postmaster
        ProcStat(pid=101, ppid=100, own=2.0, children=0.5),  # a backend
        ProcStat(pid=102, ppid=100, own=3.0, children=0.0),  # the WAL writer
        ProcStat(pid=200, ppid=101, own=50.0, children=0.0),  # not the postmaster's child
        ProcStat(pid=300, ppid=1, own=70.0, children=0.0),  # another server entirely
    ]
    assert tree_cpu(100, stats) == 1.0 + 10.0 + 2.0 + 3.0


def test_a_child_that_exits_between_two_readings_is_counted_once() -> None:
    before = [ProcStat(100, 1, 1.0, 0.0), ProcStat(101, 100, 2.0, 0.0)]
    # The backend used 0.5 s more, then exited; the postmaster waited for it.
    after = [ProcStat(100, 1, 1.0, 2.5)]
    assert tree_cpu(100, after) - tree_cpu(100, before) == 0.5


def test_generator_processes_are_handed_to_the_replicas_in_turn() -> None:
    assert assign(1200, 6, 1) == [(0, i * 200, 200) for i in range(6)]
    assert assign(1200, 6, 2) == [(i % 2, i * 200, 200) for i in range(6)]
    assert assign(1200, 6, 3) == [(i % 3, i * 200, 200) for i in range(6)]
    # Uneven: every device placed once, the first processes one more.
    assert assign(7, 3, 3) == [(0, 0, 3), (1, 3, 2), (2, 5, 2)]


def test_a_device_is_back_at_its_first_welcome_after_its_stream_ended() -> None:
    killed = 100.0
    ends = {
        # Lost its stream at the kill, refused once (busy), then back at 104.
        1: [(100.2, "after", "UNAVAILABLE", "Socket closed"), (101.0, "before", "X", "hint=busy")],
        # An attempt that ended before the kill does not count.
        2: [(50.0, "after", "UNAVAILABLE", "earlier")],
        # Lost, not back yet.
        3: [(100.3, "after", "UNAVAILABLE", "Socket closed")],
    }
    welcomes = {1: [10.0, 100.1, 104.0, 110.0], 2: [51.0], 3: [10.0]}
    back, lost = back_times(killed, ends, welcomes)
    assert (lost, [round(t, 6) for t in back]) == (2, [4.0])
    welcomes[3].append(107.5)
    back, lost = back_times(killed, ends, welcomes)
    assert (lost, [round(t, 6) for t in back]) == (2, [4.0, 7.5])
    assert [round(t, 6) for t in noticed_times(killed, ends)] == [0.2, 0.3]


def test_costs_per_stream_and_per_heartbeat_come_back_from_two_loads() -> None:
    idle, per_stream, per_beat = 0.02, 0.00003, 0.0007

    def cores(streams: float, beats: float) -> float:
        return idle + per_stream * streams + per_beat * beats

    costs = solve_costs((2400, 1200, cores(2400, 1200)), (9000, 300, cores(9000, 300)), idle)
    assert costs.per_k_streams == pytest.approx(0.03)
    assert costs.per_k_heartbeats == pytest.approx(0.7)


def test_a_cell_is_the_median_in_bold_then_each_run() -> None:
    assert cell([3.0, 1.0, 2.0], 1) == "**2.0** (3.0 / 1.0 / 2.0)"
    assert cell([1234.0]) == "1,234"
    assert cell([]) == "-"


def test_more_devices_than_the_generator_processes_can_hold_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--streams-devices", "30000", "--procs", "6"])
    assert exit_info.value.code == 2
    assert "30000 devices need more than --procs 6 processes" in capsys.readouterr().err
