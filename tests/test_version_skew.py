"""Version skew: the previous release's agent with today's controller, and today's agent
with the previous release's controller, both with mutual TLS as in production.

The previous release is tests/releases/schoolfleet-c454da8.tar.gz (tests/releases/
README.md says how it was made), unpacked and put first on PYTHONPATH; both releases'
dependencies are in this virtualenv. Every feature the older side has must keep working
(enrollment, heartbeats and reports, ping, a lesson launched, an uplink check), and a
command newer than the agent (an action it has no field for) is answered as unsupported,
without a crash on either side.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protos.schoolfleet.v1 import agent_pb2
from tests.hostile_fleet import device_row
from tests.lesson_site import FAKE_KIOSK, LessonSite
from tests.procs import (
    BIN,
    Agent,
    Controller,
    Result,
    free_port,
    schoolctl,
    tls_env,
    wait_until,
)

pytestmark = pytest.mark.e2e

RELEASE = Path(__file__).parent / "releases" / "schoolfleet-c454da8.tar.gz"
DEVICE, SCHOOL, ROOM = "panel-skew", "s1", "r1"
# An action a later release might add to Command's oneof: a field number today's
# contract does not use, as a newer controller would send it.
FUTURE_ACTION = bytes([0x9A, 0x06, 0x03]) + b"new"


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's packages, unpacked."""
    root = tmp_path_factory.mktemp("previous-release")
    with tarfile.open(RELEASE) as tar:
        tar.extractall(root, filter="data")
    # The unpacked tree is what Python imports with this PYTHONPATH, not today's code.
    where = subprocess.run(
        [sys.executable, "-c", "import agent.link, controller.server; print(agent.link.__file__)"],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(root / "agent/link.py")
    return root


@dataclass(frozen=True)
class Sides:
    """The environment each program runs with: {} is today's release."""

    controller: dict[str, str]
    agent: dict[str, str]


def _init_ca(data: Path, env: dict[str, str]) -> None:
    argv = [str(BIN / "schoolfleet-controller"), "init", "--data-dir", str(data)]
    done = subprocess.run(
        [*argv, "--address", "127.0.0.1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def _fleet(tmp: Path, sides: Sides) -> Iterator[tuple[Controller, Agent, LessonSite]]:
    data = tmp / "data"
    _init_ca(data, sides.controller)
    env = {
        **tls_env(data),
        **sides.controller,
        "SCHOOLFLEET_CONTROLLER_CONTENT_HOSTS": '["127.0.0.1"]',
        "SCHOOLFLEET_CONTROLLER_LESSON_LEAD": "1",
        "SCHOOLFLEET_CONTROLLER_UPLINK_INTERVAL": "0",
        "SCHOOLFLEET_CONTROLLER_UPLINK_BYTES": "1000000",
    }
    c = Controller(tmp, env=env)
    agent: Agent | None = None
    with LessonSite() as site:
        try:
            c.start()
            token = _ctl(c, sides, "enroll", "token", "create", "--school", SCHOOL)
            assert token.code == 0, token.err
            kiosk = tmp / "kiosk.py"
            kiosk.write_text(FAKE_KIOSK)
            argv = [sys.executable, str(kiosk), "{url}", str(tmp / "kiosk.pids")]
            extra = {
                "enroll_token": token.out.strip(),
                "ca_cert": str(data / "pki/ca.crt"),
                "enroll_controller": f"127.0.0.1:{c.enroll_port}",
                "kiosk_argv": argv,
            }
            agent = Agent(tmp, DEVICE, "panel", SCHOOL, ROOM, c.address, extra, env=sides.agent)
            yield c, agent.start(), site
        finally:
            if agent is not None:
                agent.stop()
            c.stop()


def _ctl(c: Controller, sides: Sides, *args: str) -> Result:
    """schoolctl of the controller's release, over TLS to its enrollment port."""
    ca = str(c.workdir / "data/pki/ca.crt")
    return schoolctl(
        f"127.0.0.1:{c.enroll_port}", "--ca-cert", ca, *args, env=sides.controller, timeout=60
    )


def _future_command() -> bytes:
    known = agent_pb2.Command(command_id="future:1")
    known.issued_at.FromSeconds(int(time.time()))
    return known.SerializeToString() + FUTURE_ACTION


def _queue_for_next_stream(database: Path, command: bytes) -> None:
    """Puts ``command`` in the outbox, which the controller sends when a stream opens."""
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as db, db:
        db.execute(
            "INSERT INTO outbox VALUES ('future:1', ?, '', ?, ?, ?, NULL)",
            (DEVICE, command, time.time(), time.time() + 3600),
        )


def _result(database: Path, command_id: str) -> tuple[str, str] | None:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT status, message FROM command_results WHERE command_id = ?", (command_id,)
        ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def _everything_the_older_side_has(tmp: Path, sides: Sides) -> None:
    with _fleet(tmp, sides) as (c, agent, site):
        # Enrolled through the Enroll call, then heartbeats and full reports.
        def reporting() -> bool:
            row = device_row(c.database, DEVICE)
            return row is not None and row.heartbeats_stored >= 3

        wait_until(reporting, 40, f"{DEVICE} enrolled and reporting")
        shown = _ctl(c, sides, "devices", "show", DEVICE, "--json")
        assert shown.code == 0, shown.err
        device = shown.json()
        assert device["status"] == "online" and device["school_id"] == SCHOOL

        ping = _ctl(c, sides, "devices", "ping", DEVICE, "--json")
        assert ping.code == 0, ping.err
        assert ping.json()["status"] == "ok"

        url = site.url("skew")
        launched = _ctl(c, sides, "lessons", "launch", url, "--school", SCHOOL, "--room", ROOM)
        assert launched.code == 0, launched.err
        wait_until(lambda: site.hits("/lesson/skew"), 20, "the lesson page opened by the panel")

        uplink = _ctl(c, sides, "uplink", "check", "--school", SCHOOL, "--json")
        assert uplink.code == 0, uplink.err
        assert uplink.json()["state"] == "ok" and uplink.json()["device_id"] == DEVICE

        # A command from a newer release reaches the agent on its next stream.
        agent.stop()
        _queue_for_next_stream(c.database, _future_command())
        agent.start()
        answered = wait_until(lambda: _result(c.database, "future:1"), 30, "the agent's answer")
        assert answered[0] == "unsupported", answered
        before = device_row(c.database, DEVICE)
        assert before is not None
        wait_until(
            lambda: (
                (row := device_row(c.database, DEVICE)) is not None
                and row.heartbeats_stored >= before.heartbeats_stored + 2
            ),
            20,
            "heartbeats after the unknown command",
        )
        # Only today's controller holds its data folder's lock: the release is the one asked.
        held = (c.workdir / "data/controller.lock").exists()
        assert held == (sides.controller == {})
        for log in (c.log_text(), agent.log.read_text(errors="replace")):
            assert "Traceback" not in log, log[-3000:]


def test_the_previous_agent_works_with_todays_controller(tmp_path: Path, previous: Path) -> None:
    _everything_the_older_side_has(tmp_path, Sides({}, {"PYTHONPATH": str(previous)}))


def test_todays_agent_works_with_the_previous_controller(tmp_path: Path, previous: Path) -> None:
    _everything_the_older_side_has(tmp_path, Sides({"PYTHONPATH": str(previous)}, {}))


def _heartbeats_grow(database: Path, by: int, what: str) -> None:
    """The device's heartbeats go on being stored, none missing."""
    start = device_row(database, DEVICE)
    stored = start.heartbeats_stored if start is not None else 0

    def grown() -> bool:
        row = device_row(database, DEVICE)
        return row is not None and row.heartbeats_stored >= stored + by

    wait_until(grown, 40, what)


def test_a_fleet_upgrades_controller_then_agents_and_the_controller_rolls_back(
    tmp_path: Path, previous: Path
) -> None:
    old = {"PYTHONPATH": str(previous)}
    data = tmp_path / "data"
    _init_ca(data, old)
    env = tls_env(data, f"127.0.0.1:{free_port()}")
    c = Controller(tmp_path, free_port(), {**env, **old})
    agent: Agent | None = None
    try:
        c.start()
        token = _ctl(c, Sides(old, old), "enroll", "token", "create", "--school", SCHOOL)
        extra = {
            "enroll_token": token.out.strip(),
            "ca_cert": str(data / "pki/ca.crt"),
            "enroll_controller": f"127.0.0.1:{c.enroll_port}",
        }
        agent = Agent(tmp_path, DEVICE, "panel", SCHOOL, ROOM, c.address, extra, env=old)
        agent.start()
        _heartbeats_grow(c.database, 3, "the previous release's fleet reporting")
        # Today's backup of the previous controller's store, before the upgrade.
        archive = tmp_path / "before-upgrade.tar.gz"
        argv = [str(BIN / "schoolfleet-controller"), "backup", "--to", str(archive)]
        argv += ["--config", str(tmp_path / "controller.toml")]
        argv += ["--database", f"sqlite:{c.database}"]
        made = subprocess.run(
            argv, env={**os.environ, **env}, capture_output=True, text=True, check=False
        )
        assert made.returncode == 0, made.stderr

        # The controller first: its store migrates, the previous agent goes on.
        c.stop()
        c.env = env
        c.start()
        _heartbeats_grow(c.database, 3, "the previous agent reporting to today's controller")
        # Then the agent, with the same certificate and spool.
        agent.stop()
        agent.env = {}
        agent.start()
        _heartbeats_grow(c.database, 3, "today's agent reporting")
        row = device_row(c.database, DEVICE)
        assert row is not None and row.seq_gaps == 0 and row.heartbeats_stored == row.last_seq
        assert agent.log.read_text().count(f"enrolled device={DEVICE}") == 1

        # Back to the previous controller: the migrated store is refused, so the backup
        # taken before the upgrade is restored; today's agent is ahead of it and goes on.
        c.stop()
        c.env = {**env, **old}
        with pytest.raises(AssertionError, match="newer than this controller knows"):
            c.start()
        restore = [str(BIN / "schoolfleet-controller"), "restore", "--from", str(archive)]
        restore += [*argv[4:], "--force"]
        done = subprocess.run(
            restore, env={**os.environ, **env}, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        c.start()
        _heartbeats_grow(c.database, 3, "today's agent reporting to the previous controller")
        assert "Traceback" not in c.log_text()
        assert "Traceback" not in agent.log.read_text()
    finally:
        if agent is not None:
            agent.stop()
        c.stop()
