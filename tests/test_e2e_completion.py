"""End to end: shell completion of schoolctl, through the protocol bash, zsh and fish use
(_SCHOOLCTL_COMPLETE), against a real controller: ids and names come from it, within the
user's schools, kept for a minute, and a slow controller never holds the shell."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import BIN, Agent, Controller, Result, schoolctl, wait_until

pytestmark = pytest.mark.e2e

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"


@dataclass
class Fleet:
    c: Controller
    it1: str  # school-it of s1


def _fleet(tmp: Path) -> Iterator[Fleet]:
    env = {
        "SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1",
        "SCHOOLFLEET_CONTROLLER_PLAYBOOKS_DIR": str(PLAYBOOKS),
    }
    c = Controller(tmp, env=env).start()
    agents = [
        Agent(tmp, "panel-a1", "panel", "s1", "r1", c.address).start(),
        Agent(tmp, "panel-a2", "panel", "s1", "r1", c.address).start(),
        Agent(tmp, "laptop-b", "laptop", "s2", "r2", c.address).start(),
    ]
    try:

        def all_in() -> bool:
            listed = schoolctl(c.address, "devices", "list", "--json")
            return listed.code == 0 and len(listed.json()) == 3

        wait_until(all_in, 30, "three devices known")
        yield Fleet(c, c.create_user("it1", "school-it", "s1").token)
    finally:
        for agent in agents:
            agent.stop()
        c.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from _fleet(tmp_path_factory.mktemp("completion"))


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet this test may stop."""
    (tmp_path / "fleet").mkdir()
    yield from _fleet(tmp_path / "fleet")


def _complete(
    shell: str,
    words: str,
    token: str,
    cache: Path,
    controller: str | None = None,
) -> tuple[Result, float]:
    """What the shell's completion function gets for the words typed so far."""
    env = {
        **os.environ,
        "_SCHOOLCTL_COMPLETE": f"complete_{shell}",
        "SCHOOLCTL_CONFIG": os.devnull,
        "SCHOOLCTL_TOKEN": token,
        "XDG_CACHE_HOME": str(cache),
    }
    if controller:
        words = words.replace("schoolctl", f"schoolctl --controller {controller}", 1)
    if shell == "bash":
        env["COMP_WORDS"] = words
        env["COMP_CWORD"] = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    else:
        env["_TYPER_COMPLETE_ARGS"] = words
        env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    began = time.monotonic()
    done = subprocess.run(
        [str(BIN / "schoolctl")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    return Result(done.returncode, done.stdout, done.stderr), time.monotonic() - began


def _candidates(shell: str, got: Result) -> list[str]:
    assert got.code == 0 and got.err == "", got
    if shell == "zsh":
        # _arguments '*: :(("a" "b"))' (with a description after ':' when there is one)
        inner = got.out.split("((", 1)[1].rsplit("))", 1)[0] if "((" in got.out else ""
        return [part.strip('"').split(":")[0] for part in inner.split()]
    return [line.split("\t")[0] for line in got.out.splitlines() if line]


def test_ids_and_names_come_from_the_controller_in_each_shell(fleet: Fleet, tmp_path: Path) -> None:
    token, address = fleet.c.admin_token, fleet.c.address
    cases = [
        ("schoolctl devices show pan", ["panel-a1", "panel-a2"]),
        ("schoolctl devices ping ", ["laptop-b", "panel-a1", "panel-a2"]),
        ("schoolctl devices list --school ", ["s1", "s2"]),
        ("schoolctl lessons today --school s", ["s1", "s2"]),
        ("schoolctl rollout start time", ["timesync.yml"]),
    ]
    for shell in ("bash", "zsh", "fish"):
        for words, expected in cases:
            got, _ = _complete(shell, words, token, tmp_path / shell, address)
            assert _candidates(shell, got) == expected, (shell, words, got)
    # No rollout yet: nothing to offer, and the controller was asked.
    got, _ = _complete("bash", "schoolctl rollout status ", token, tmp_path / "bash", address)
    assert _candidates("bash", got) == []
    (kept,) = (tmp_path / "bash" / "schoolfleet").iterdir()
    assert json.loads(kept.read_text())["rollouts"]["names"] == []
    assert kept.stat().st_mode & 0o777 == 0o600
    assert kept.parent.stat().st_mode & 0o777 == 0o700


def test_a_scoped_user_is_offered_only_their_schools_and_devices(
    fleet: Fleet, tmp_path: Path
) -> None:
    address = fleet.c.address
    cache = tmp_path / "cache"
    got, _ = _complete("bash", "schoolctl devices show ", fleet.it1, cache, address)
    assert _candidates("bash", got) == ["panel-a1", "panel-a2"]
    got, _ = _complete("bash", "schoolctl status --school ", fleet.it1, cache, address)
    assert _candidates("bash", got) == ["s1"]
    # Central ops, same cache folder: their own answers, not the scoped user's.
    got, _ = _complete("bash", "schoolctl devices show ", fleet.c.admin_token, cache, address)
    assert _candidates("bash", got) == ["laptop-b", "panel-a1", "panel-a2"]
    assert len(list((cache / "schoolfleet").iterdir())) == 2


def test_answers_are_kept_and_a_gone_controller_completes_from_them(
    own_fleet: Fleet, tmp_path: Path
) -> None:
    token, address = own_fleet.c.admin_token, own_fleet.c.address
    words = "schoolctl devices show "
    first, _ = _complete("bash", words, token, tmp_path, address)
    assert _candidates("bash", first) == ["laptop-b", "panel-a1", "panel-a2"]
    own_fleet.c.stop()
    kept, took = _complete("bash", words, token, tmp_path, address)
    assert _candidates("bash", kept) == ["laptop-b", "panel-a1", "panel-a2"] and took < 3
    # Older than a minute: asked again, no answer, the old names still offered.
    (path,) = (tmp_path / "schoolfleet").iterdir()
    data = json.loads(path.read_text())
    data["devices"]["at"] -= 120
    path.write_text(json.dumps(data))
    old, took = _complete("bash", words, token, tmp_path, address)
    assert _candidates("bash", old) == ["laptop-b", "panel-a1", "panel-a2"] and took < 3


def test_a_controller_that_never_answers_does_not_hold_the_shell(tmp_path: Path) -> None:
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        # Bound, not listening: refused at once. What schoolctl takes with no wait at all
        # (its start and imports, seconds on a busy machine) is not the controller's.
        closed.bind(("127.0.0.1", 0))
        refusing = f"127.0.0.1:{closed.getsockname()[1]}"
        for words in ("schoolctl devices show ", "schoolctl rollout start "):
            refused, start = _complete("bash", words, "sfu_whatever", tmp_path / "r", refusing)
            assert _candidates("bash", refused) == [], refused
            got, took = _complete("bash", words, "sfu_whatever", tmp_path / "s", address)
            assert _candidates("bash", got) == [], got
            # The wait for a silent controller is one TIMEOUT (1 s), not the shell's to bear.
            assert took - start < 2, f"completion took {took:.1f}s, {start:.1f}s when refused"


def test_completion_installs_for_bash_zsh_and_fish(tmp_path: Path) -> None:
    # A person's shell is detected from the process tree; typer's switch makes the
    # options take the shell's name instead, for each of the three here.
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "SCHOOLCTL_CONFIG": os.devnull,
        "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1",
    }
    for shell, marker in (
        ("bash", "complete_bash"),
        ("zsh", "complete_zsh"),
        ("fish", "complete_fish"),
    ):
        shown = subprocess.run(
            [str(BIN / "schoolctl"), "--show-completion", shell],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
        assert shown.returncode == 0 and marker in shown.stdout, shown
        installed = subprocess.run(
            [str(BIN / "schoolctl"), "--install-completion", shell],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
        assert installed.returncode == 0, installed
        assert f"{shell} completion installed in" in installed.stdout
    assert "schoolctl" in (tmp_path / ".bashrc").read_text()
    assert (tmp_path / ".config/fish/completions/schoolctl.fish").exists()
