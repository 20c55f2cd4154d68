"""End to end: schoolctl as someone meeting it for the first time runs it: help, a shell
without a login, a school id typed wrong, the output of a table."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.procs import BIN, Agent, Controller, Result, schoolctl, wait_until

pytestmark = pytest.mark.e2e


@dataclass
class Fleet:
    c: Controller
    it1: str  # school-it of s1
    it3: str  # school-it of s3, which has no devices


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A controller with panel-a (school s1) and panel-b (school s2) online."""
    tmp = tmp_path_factory.mktemp("first-use")
    c = Controller(tmp, env={"SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1"}).start()
    agents = [
        Agent(tmp, "panel-a", "panel", "s1", "r1", c.address).start(),
        Agent(tmp, "panel-b", "panel", "s2", "r2", c.address).start(),
    ]
    try:

        def both_online() -> bool:
            listed = schoolctl(c.address, "devices", "list", "--status", "online", "--json")
            return listed.code == 0 and len(listed.json()) == 2

        wait_until(both_online, 30, "panel-a and panel-b online")
        it1 = c.create_user("it1", "school-it", "s1").token
        it3 = c.create_user("it3", "school-it", "s3").token
        yield Fleet(c, it1, it3)
    finally:
        for agent in agents:
            agent.stop()
        c.stop()


def _bare(*args: str, env: dict[str, str] | None = None) -> Result:
    """schoolctl exactly as typed, with no login file."""
    environ = {**os.environ, "SCHOOLCTL_CONFIG": "/nonexistent/schoolctl.toml", **(env or {})}
    environ.pop("SCHOOLCTL_TOKEN", None)
    environ.pop("SCHOOLCTL_CONTROLLER", None)
    done = subprocess.run(
        [str(BIN / "schoolctl"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=environ,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def _one_line(result: Result, code: int, *words: str) -> None:
    assert result.code == code, result
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result
    for word in words:
        assert word in result.err, result.err


def test_bare_schoolctl_and_a_bare_group_print_help_on_stdout_and_exit_0() -> None:
    for argv in ([], ["devices"], ["enroll", "token"], ["rollout"]):
        got = _bare(*argv)
        assert got.code == 0, (argv, got)
        assert got.out.startswith("Usage: schoolctl"), (argv, got.out)
        assert got.err == "", (argv, got.err)
    assert "login" in _bare().out and "Commands:" in _bare("devices").out


def test_help_shows_flags_as_flags_and_keeps_phrases_whole() -> None:
    got = _bare("devices", "list", "--help", env={"COLUMNS": "80"})
    assert got.code == 0, got
    assert "<bool>" not in got.out
    lines = got.out.splitlines()
    assert any(line.split()[:1] == ["--json"] for line in lines), got.out
    # Wrapped at any width, --max-fail is never cut after its hyphen.
    for width in ("60", "73", "80", "100"):
        text = _bare("rollout", "--help", env={"COLUMNS": width}).out
        assert "--max-\n" not in text and "--max-fail" in text, width
    assert all(line == line.rstrip() for line in got.out.splitlines())


def test_devices_show_lines_carry_no_trailing_spaces(fleet: Fleet) -> None:
    shown = schoolctl(fleet.c.address, "devices", "show", "panel-a")
    assert shown.code == 0, shown
    lines = shown.out.splitlines()
    assert any(line.startswith("device") and "panel-a" in line for line in lines)
    padded = [line for line in lines if line != line.rstrip()]
    assert padded == [], padded
    listed = schoolctl(fleet.c.address, "devices", "list")
    assert all(line == line.rstrip() for line in listed.out.splitlines())


def test_no_login_says_so_and_how_to_log_in_not_that_the_controller_is_down(
    fleet: Fleet,
) -> None:
    # The controller runs and answers; there is just no token anywhere.
    got = _bare("--controller", fleet.c.address, "status")
    _one_line(got, 6, "not logged in", "/nonexistent/schoolctl.toml", "schoolctl", "login")
    assert "cannot reach" not in got.err and "is it running" not in got.err
    # A new shell on the machine where the demo runs: the default address, no login file.
    default = _bare("devices", "list")
    _one_line(default, 6, "not logged in")


def test_a_school_that_does_not_exist_is_named_with_the_schools_there_are(
    fleet: Fleet,
) -> None:
    address = fleet.c.address
    expected = "schoolctl: no school '1001'; schools: s1, s2\n"
    for argv in (
        ["devices", "list", "--school", "1001"],
        ["devices", "list", "--school", "1001", "--json"],
        ["lessons", "today", "--school", "1001"],
        ["enroll", "token", "list", "--school", "1001"],
        ["status", "--school", "1001"],
    ):
        got = schoolctl(address, *argv)
        assert (got.code, got.err, got.out) == (4, expected, ""), (argv, got)
    # A school there is, with nothing matching: an empty answer, not an error.
    laptops = schoolctl(address, "devices", "list", "--school", "s1", "--kind", "laptop")
    assert (laptops.code, laptops.err) == (0, "no devices match\n"), laptops
    assert schoolctl(address, "lessons", "today", "--school", "s1").code == 0


def test_a_scoped_user_is_told_only_of_their_own_schools(fleet: Fleet) -> None:
    address = fleet.c.address
    # it3's own school has no devices: named as such, and no other school is listed.
    own = schoolctl(address, "devices", "list", "--school", "s3", token=fleet.it3)
    _one_line(own, 4, "no school 's3'; schools: none with devices yet")
    for other in ("s1", "s2", "1001"):
        got = schoolctl(address, "devices", "list", "--school", other, token=fleet.it3)
        _one_line(got, 6)
        assert "s1" not in got.err.replace("school s1", "") or other == "s1", got.err
        assert "s2" not in got.err.replace("school s2", "") or other == "s2", got.err
    typo = schoolctl(address, "lessons", "today", "--school", "s1x", token=fleet.it1)
    _one_line(typo, 6, "s1")
    assert "s2" not in typo.err, typo.err
    mine = schoolctl(
        address, "devices", "list", "--school", "s1", "--kind", "laptop", token=fleet.it1
    )
    assert (mine.code, mine.err) == (0, "no devices match\n"), mine
