"""bench/entry.py: the exit codes and log lines of a benchmark's main, and its SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from bench.entry import Timed, measure


class Broke(Exception):
    """A failure the benchmark knows: one line, not a traceback."""


def _raise(exc: BaseException) -> None:
    raise exc


def test_a_finished_run_gives_its_value_minutes_and_loads() -> None:
    ran = measure(lambda: "figures", (Broke,))

    assert isinstance(ran, Timed)
    assert ran.value == "figures"
    assert 0 <= ran.minutes < 1
    assert float(ran.load_before) >= 0 and float(ran.load_after) >= 0


def test_a_known_failure_is_one_line_and_exit_code_1(caplog: pytest.LogCaptureFixture) -> None:
    assert measure(lambda: _raise(Broke("controller 2 did not start")), (Broke,)) == 1

    assert [r.getMessage() for r in caplog.records] == [
        "benchmark failed: controller 2 did not start"
    ]


def test_a_failure_of_another_type_is_not_hidden() -> None:
    with pytest.raises(AssertionError):
        measure(lambda: _raise(AssertionError("a bug")), (Broke,))


def test_ctrl_c_is_one_line_and_exit_code_130(caplog: pytest.LogCaptureFixture) -> None:
    assert measure(lambda: _raise(KeyboardInterrupt()), (Broke,)) == 130

    assert [r.getMessage() for r in caplog.records] == [
        "interrupted; every process it started is stopped"
    ]


def test_without_root_a_bench_that_needs_it_does_not_start(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    started: list[bool] = []

    assert measure(lambda: started.append(True), (Broke,), needs_root=True) == 1

    assert started == []
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "network namespaces need root")
    ]


def test_sigterm_during_the_run_runs_its_finally_blocks_and_exits_143() -> None:
    stopped: list[str] = []

    def run() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler interrupts this at once
        finally:
            stopped.append("controller")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        measure(run, (Broke,))

    assert exited.value.code == 143
    assert stopped == ["controller"]
    assert signal.getsignal(signal.SIGTERM) is before
