"""Backup while the fleet reports, restore into the stopped controller, and the fleet
goes on: devices whose sequences are ahead of the restored store are taken and
counted, nothing sent after the restore is lost, and a device enrolled after the
backup is recognised by its certificate from the same CA."""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from tests.hostile_fleet import DeviceRow, device_row, enrolled, enrolled_agent
from tests.procs import (
    Agent,
    Controller,
    Result,
    free_port,
    init_controller_ca,
    tls_env,
    wait_until,
)

SCHOOL = "4321"


def _run(c: Controller, *args: str) -> Result:
    return c.cli(*args)


def _agent(c: Controller, device_id: str, data: Path) -> Agent:
    return enrolled_agent(c, device_id, SCHOOL, data / "pki")


def _reporting(c: Controller, device_id: str, at_least: int) -> DeviceRow:
    def check() -> DeviceRow | None:
        row = device_row(c.database, device_id)
        return row if row is not None and row.heartbeats_stored >= at_least else None

    return wait_until(check, 40, f"{device_id} with {at_least} heartbeats stored")


@pytest.mark.e2e
def test_restore_of_an_older_backup_with_agents_running(
    tmp_path: Path, agents: list[Agent]
) -> None:
    data = tmp_path / "data"
    init_controller_ca(data)
    c = Controller(tmp_path, free_port(), tls_env(data, f"127.0.0.1:{free_port()}"))
    try:
        c.start()
        early = _agent(c, "panel-early", data)
        agents.append(early)
        _reporting(c, "panel-early", 3)

        archive = tmp_path / "backups/controller.tar.gz"
        archive.parent.mkdir()
        made = _run(c, "backup", "--to", str(archive))
        assert made.code == 0, made.err
        assert made.out.startswith(f"backup written to {archive} ")
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        with tarfile.open(archive) as tar:
            names = tar.getnames()
        assert names[0] == "manifest.json"
        assert {"store/controller.db", "data/pki/ca.key", "data/pki/ca.crt"} <= set(names)
        # A backup never overwrites one.
        again = _run(c, "backup", "--to", str(archive))
        assert again.code == 2 and again.err.count("\n") == 1 and "exists" in again.err

        # After the backup: the early device goes on, a new one enrolls.
        late = _agent(c, "panel-late", data)
        agents.append(late)
        _reporting(c, "panel-late", 3)
        backed_up = device_row(c.database, "panel-early")
        assert backed_up is not None
        ahead = _reporting(c, "panel-early", backed_up.heartbeats_stored + 5)

        refused = _run(c, "restore", "--from", str(archive))
        assert refused.code == 2
        assert refused.err == (
            f"schoolfleet-controller: the controller is running on {data}; "
            "stop it before a restore\n"
        )

        assert c.stop() == 0
        # Taken by the old store before it stopped: the newest sequence it knew.
        at_stop = device_row(c.database, "panel-early")
        assert at_stop is not None and at_stop.last_seq >= ahead.last_seq

        not_empty = _run(c, "restore", "--from", str(archive))
        assert not_empty.code == 2 and not_empty.err.count("\n") == 1
        assert "is not empty" in not_empty.err and "--force" in not_empty.err

        done = _run(c, "restore", "--from", str(archive), "--force")
        assert done.code == 0, done.err
        assert "restored the backup taken" in done.out
        restored = device_row(c.database, "panel-early")
        assert restored is not None and restored.last_seq < at_stop.last_seq
        assert enrolled(c.database, ["panel-early", "panel-late"]) == {"panel-early"}

        c.start()
        # The early device is ahead of the restored store: taken, and its heartbeats
        # after the one the old store had last are all stored.
        after = _reporting(c, "panel-early", restored.heartbeats_stored + 5)
        assert after.last_seq > at_stop.last_seq + 3
        # Every sequence number is stored or counted missing, and the only ones
        # missing are those the replaced store had taken (and acked) after the backup.
        assert after.heartbeats_stored + after.seq_gaps == after.last_seq
        assert after.seq_gaps - restored.seq_gaps <= at_stop.last_seq - restored.last_seq

        # Enrolled after the backup: its certificate from the same CA is recognised.
        _reporting(c, "panel-late", 3)
        assert enrolled(c.database, ["panel-late"]) == {"panel-late"}
        log = c.log_text()
        refusals = [
            line for line in log.splitlines() if "stream refused device=panel-early" in line
        ]
        assert refusals == []
        assert "certificate adopted after a restore device=panel-late" in log, log[-3000:]
        assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]
    finally:
        c.stop()


def _serial(database: Path, device_id: str) -> str | None:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT serial FROM enrollments WHERE device_id = ?", (device_id,)
        ).fetchone()
    return str(row[0]) if row else None


@pytest.mark.e2e
@pytest.mark.slow
def test_a_certificate_renewed_after_the_backup_is_taken_back_after_the_restore(
    tmp_path: Path, agents: list[Agent]
) -> None:
    data = tmp_path / "data"
    init_controller_ca(data)
    env = tls_env(data, f"127.0.0.1:{free_port()}")
    # Renewed two thirds in: 20 s after enrollment.
    env["SCHOOLFLEET_CONTROLLER_DEVICE_CERT_LIFETIME"] = "30"
    c = Controller(tmp_path, free_port(), env)
    try:
        c.start()
        agents.append(_agent(c, "panel-renews", data))
        _reporting(c, "panel-renews", 2)
        enrolled_serial = _serial(c.database, "panel-renews")
        archive = tmp_path / "backup.tar.gz"
        assert _run(c, "backup", "--to", str(archive)).code == 0
        renewed = wait_until(
            lambda: (s := _serial(c.database, "panel-renews")) != enrolled_serial and s,
            40,
            "the device's renewed certificate in use",
        )
        c.stop()
        done = _run(c, "restore", "--from", str(archive), "--force")
        assert done.code == 0, done.err
        assert _serial(c.database, "panel-renews") == enrolled_serial
        c.start()
        before = device_row(c.database, "panel-renews")
        assert before is not None
        _reporting(c, "panel-renews", before.heartbeats_stored + 3)
        log = c.log_text()
        adopted = f"certificate adopted after a restore device=panel-renews school={SCHOOL}"
        assert f"{adopted} serial={renewed} replaced={enrolled_serial}" in log, log[-3000:]
        assert "Traceback" not in log
    finally:
        c.stop()
