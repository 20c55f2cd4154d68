"""`schoolfleet-controller ca ...`: every mistake is one line and exit 2, nothing changed."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from controller.stores import open_stores
from tests.procs import Result, controller_cli, init_controller_ca


def ca(data: Path, database: Path, *args: str) -> Result:
    return controller_cli(
        "ca", *args, "--data-dir", str(data), "--database", f"sqlite://{database}"
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    init_controller_ca(tmp_path / "data")
    open_stores(f"sqlite://{tmp_path / 'controller.db'}").close()
    return tmp_path / "data"


def one_line(result: Result, expected: str) -> None:
    assert result.code == 2 and result.out == "", result
    assert result.err == f"schoolfleet-controller: {expected}\n"


def test_mistakes_are_one_line_and_change_nothing(tmp_path: Path, data: Path) -> None:
    db = tmp_path / "controller.db"
    pki = data / "pki"
    files = {p.name: p.read_bytes() for p in pki.iterdir()}
    one_line(
        ca(tmp_path / "elsewhere", db, "status"),
        f"{tmp_path}/elsewhere/pki/ca.key does not exist: run 'schoolfleet-controller init' first",
    )
    # A database that is not there is never made: an empty fleet would let retire-old
    # strand every device.
    missing = tmp_path / "nowhere/controller.db"
    no_database = (
        f"database sqlite://{missing} does not exist: give the controller's --database or --config"
    )
    one_line(ca(data, missing, "status"), no_database)
    one_line(
        ca(data, db, "retire-old"),
        "there is no next CA to move to: add one first ('schoolfleet-controller ca add-next')",
    )
    one_line(
        ca(data, db, "server-cert", "--name", "-bad.test"),
        "'-bad.test' is not a valid DNS name (dot-separated labels of letters, digits and "
        "'-', at most 63 characters each)",
    )
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == files
    (pki / "ca.key").chmod(0o640)
    one_line(
        ca(data, db, "add-next"),
        f"{pki}/ca.key is open to group or others (mode 0640): it must be 0600 "
        f"(chmod 600 {pki}/ca.key)",
    )
    (pki / "ca.key").chmod(0o600)
    assert ca(data, db, "add-next").code == 0
    one_line(
        ca(data, db, "add-next"),
        f"a next CA exists already ({pki}/ca-next.crt): retire the old one first "
        "('schoolfleet-controller ca retire-old')",
    )
    one_line(ca(data, missing, "retire-old"), no_database)
    assert (pki / "ca-next.key").exists()
    status = ca(data, db, "status", "--json")
    assert [c["role"] for c in status.json()["cas"]] == ["current", "next"]
    assert (pki / "ca-next.key").stat().st_mode & 0o777 == 0o600
    assert (pki / "ca-bundle.crt").read_bytes().count(b"BEGIN CERTIFICATE") == 2
    assert not missing.parent.exists()
    # Each change is in the audit log, made on this machine; refusals changed nothing.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT actor, action, outcome FROM audit").fetchall()
    assert rows == [("controller-host", "ca.add-next", "ok")]
