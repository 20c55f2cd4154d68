"""Backups and restores on real files: a store being written while it is copied, and
archives that are damaged, forged or in the way, each refused in one line with nothing
changed; and which certificates a restored controller adopts."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from controller.backup.archive import DATABASE, MANIFEST, parse_manifest, take_backup
from controller.backup.restore import _swap, restore_backup
from controller.datadir import lock as data_lock
from controller.enroll.cert_store import CertState
from controller.enroll.restored import Presented, RestoreMark, adoptable
from controller.errors import BackupError, ConfigError
from controller.store.migrations import LATEST
from controller.stores import open_stores
from inventory.people import AuditEntry, Outcome
from tests.procs import BIN


def _entry(n: int) -> AuditEntry:
    return AuditEntry(0, float(n), "ops", "test.write", f"t{n}", "", Outcome.OK, "", "local")


def _controller_files(tmp: Path) -> tuple[Path, Path]:
    """A data folder with a CA-like pki folder and a store with some rows."""
    data = tmp / "data"
    (data / "pki").mkdir(parents=True)
    (data / "pki/ca.key").write_bytes(b"secret key")
    os.chmod(data / "pki/ca.key", 0o600)
    (data / "pki/ca.crt").write_bytes(b"public cert")
    (data / "ssh").mkdir()
    (data / "ssh/known_hosts").write_text("host key\n")
    database = data / "controller.db"
    store = open_stores(f"sqlite:{database}")
    try:
        for n in range(1, 11):
            store.people.append_audit(_entry(n))
    finally:
        store.close()
    return data, database


def _audit_ids(database: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [int(r[0]) for r in db.execute("SELECT entry_id FROM audit ORDER BY entry_id")]


def test_a_store_being_written_is_copied_at_one_moment_and_restored_whole(
    tmp_path: Path,
) -> None:
    data, database = _controller_files(tmp_path)
    store = open_stores(f"sqlite:{database}")
    stop = threading.Event()

    def write() -> None:
        n = 100
        while not stop.is_set():
            store.people.append_audit(_entry(n))
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.2)
        archive = tmp_path / "backup.tar.gz"
        manifest = take_backup(database, data, archive, time.time())
        time.sleep(0.2)
    finally:
        stop.set()
        writer.join()
        store.close()
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert manifest.schema_version == LATEST
    assert {m.path for m in manifest.members} == {
        DATABASE,
        "data/pki/ca.key",
        "data/pki/ca.crt",
        "data/ssh/known_hosts",
    }
    live = _audit_ids(database)

    target = tmp_path / "restored"
    done = restore_backup(archive, target / "controller.db", target, force=False, now=time.time())
    assert done.replaced_to is None
    copied = _audit_ids(target / "controller.db")
    # One moment: every entry up to the last copied, none torn, fewer than the live store.
    assert copied == list(range(1, len(copied) + 1)) and 10 < len(copied) < len(live)
    assert (target / "pki/ca.key").read_bytes() == b"secret key"
    assert stat.S_IMODE((target / "pki/ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "controller.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    mark = json.loads((target / "restored.json").read_text())
    assert mark["backup_taken_at"] == manifest.taken_at


def test_a_backup_never_overwrites_and_needs_a_store(tmp_path: Path) -> None:
    data, database = _controller_files(tmp_path)
    archive = tmp_path / "b.tar.gz"
    archive.write_text("precious")
    with pytest.raises(BackupError, match="exists; a backup never overwrites"):
        take_backup(database, data, archive, time.time())
    assert archive.read_text() == "precious"
    with pytest.raises(BackupError, match="no such file"):
        take_backup(tmp_path / "none.db", data, tmp_path / "c.tar.gz", time.time())
    assert not (tmp_path / "c.tar.gz").exists()
    # Nothing left behind in the target folder either.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.gz", "data"]
    # Inside a folder it backs up, its own partial files would go in the archive.
    with pytest.raises(BackupError, match=r"inside .*pki; write the backup elsewhere"):
        take_backup(database, data, data / "pki/b.tar.gz", time.time())
    assert sorted(p.name for p in (data / "pki").iterdir()) == ["ca.crt", "ca.key"]


def _rewrite(
    archive: Path, to: Path, change: dict[str, bytes | None], extra: dict[str, bytes]
) -> None:
    """A copy of ``archive`` with members replaced (None: dropped) or added; the
    manifest is rewritten only if ``change`` names it."""
    with tarfile.open(archive) as tar, tarfile.open(to, "w:gz") as out:
        for info in tar.getmembers():
            body = tar.extractfile(info)
            assert body is not None
            data = change.get(info.name, body.read())
            if data is None:
                continue
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def _manifest(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        body = tar.extractfile(MANIFEST)
        assert body is not None
        parsed: dict[str, object] = json.loads(body.read())
        return parsed


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    data, database = _controller_files(tmp_path)
    made = tmp_path / "good.tar.gz"
    take_backup(database, data, made, time.time())
    return made


def _refused(archive: Path, tmp: Path, match: str) -> None:
    target = tmp / "target"
    with pytest.raises(BackupError, match=match):
        restore_backup(archive, target / "controller.db", target, force=False, now=time.time())
    # Never half-restored: the folder holds nothing but the lock the restore took.
    assert [p.name for p in target.iterdir()] == ["controller.lock"]


def test_a_damaged_member_is_refused_and_nothing_written(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {"data/pki/ca.key": b"another key"}, {})
    _refused(bad, tmp_path, "data/pki/ca.key: .* bytes, the manifest says")
    _rewrite(archive, bad, {"data/pki/ca.key": b"secret kez"}, {})
    _refused(bad, tmp_path, "data/pki/ca.key: SHA-256 does not match the manifest")


def test_members_the_manifest_does_not_name_or_lacks_are_refused(
    archive: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {}, {"data/pki/extra.key": b"x"})
    _refused(bad, tmp_path, "holds 'data/pki/extra.key', which the manifest does not name")
    _rewrite(archive, bad, {"data/ssh/known_hosts": None}, {})
    _refused(bad, tmp_path, "lacks data/ssh/known_hosts, which the manifest names")
    _rewrite(archive, bad, {MANIFEST: None}, {})
    _refused(bad, tmp_path, "no manifest.json first")


@pytest.mark.parametrize(
    "path",
    ["../x", "/etc/passwd", "data/pki/../../x", "data/other/file", "store/other.db", "data/pki"],
)
def test_a_manifest_naming_a_file_outside_the_data_folder_is_refused(
    archive: Path, tmp_path: Path, path: str
) -> None:
    manifest = _manifest(archive)
    members = manifest["members"]
    assert isinstance(members, list)
    members.append({"path": path, "size": 1, "sha256": "0" * 64, "mode": 0o600})
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {MANIFEST: json.dumps(manifest).encode()}, {})
    _refused(bad, tmp_path, "the manifest names a file a restore may not write")


def test_a_store_newer_than_this_controller_is_refused(archive: Path, tmp_path: Path) -> None:
    manifest = _manifest(archive)
    manifest["schema_version"] = LATEST + 1
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {MANIFEST: json.dumps(manifest).encode()}, {})
    _refused(bad, tmp_path, "newer than this controller knows")


def test_a_damaged_store_is_refused(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        body = tar.extractfile(DATABASE)
        assert body is not None
        store = bytearray(body.read())
    # The second page's b-tree header (the file's header is left whole): not a page.
    store[4096 : 4096 + 12] = b"\xff" * 12
    manifest = _manifest(archive)
    members = manifest["members"]
    assert isinstance(members, list)
    for m in members:
        if m["path"] == DATABASE:
            m["sha256"] = hashlib.sha256(bytes(store)).hexdigest()
    bad = tmp_path / "bad.tar.gz"
    _rewrite(archive, bad, {DATABASE: bytes(store), MANIFEST: json.dumps(manifest).encode()}, {})
    _refused(bad, tmp_path, "the backup's store|integrity check failed")


def test_not_a_backup_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(gzip.compress(b"not a tar at all" * 100))
    _refused(junk, tmp_path, "not a readable backup|damaged archive|no manifest")
    _refused(tmp_path / "missing.tar.gz", tmp_path, "no such file")


def test_a_running_controller_or_a_folder_in_use_is_refused(archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    fd = data_lock.hold(target)
    try:
        with pytest.raises(ConfigError, match="another controller is running"):
            data_lock.hold(target)
        with pytest.raises(BackupError, match=r"the controller is running on .*; stop it"):
            restore_backup(archive, target / "controller.db", target, force=True, now=time.time())
    finally:
        os.close(fd)
    (target / "pki").mkdir()
    (target / "pki/ca.key").write_text("the current key")
    with pytest.raises(BackupError, match=r"is not empty \(pki\).*--force"):
        restore_backup(archive, target / "controller.db", target, force=False, now=time.time())
    assert (target / "pki/ca.key").read_text() == "the current key"


def test_force_keeps_what_it_replaces_with_the_old_stores_wal(
    archive: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    (target / "pki").mkdir(parents=True)
    (target / "pki/ca.key").write_text("the current key")
    (target / "controller.db").write_text("old store")
    (target / "controller.db-wal").write_text("old wal")
    done = restore_backup(archive, target / "controller.db", target, force=True, now=time.time())
    assert done.replaced_to is not None
    assert (done.replaced_to / "pki/ca.key").read_text() == "the current key"
    # The old -wal must never sit beside the restored store: SQLite would replay it.
    assert (done.replaced_to / "controller.db-wal").read_text() == "old wal"
    assert not (target / "controller.db-wal").exists()
    assert (target / "pki/ca.key").read_bytes() == b"secret key"
    assert _audit_ids(target / "controller.db") == list(range(1, 11))


def test_a_swap_that_fails_midway_is_undone(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.new").write_text(name)
    moves = [
        (tmp_path / "a.new", tmp_path / "a"),
        (tmp_path / "b.new", tmp_path / "b"),
        (tmp_path / "missing.new", tmp_path / "c"),
    ]
    with pytest.raises(FileNotFoundError, match=r"missing\.new"):
        _swap(moves)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.new", "b.new"]


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    restore = subprocess.run(
        [
            str(BIN / "schoolfleet-controller"),
            "restore",
            "--from",
            str(tmp_path / "none.tar.gz"),
            "--data-dir",
            str(tmp_path / "data"),
            "--database",
            f"sqlite:{tmp_path / 'data/controller.db'}",
            "--config",
            str(tmp_path / "none.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert restore.returncode == 2
    assert restore.stderr.count("\n") == 1 and "Traceback" not in restore.stderr


def test_parse_manifest_refuses_other_formats() -> None:
    with pytest.raises(BackupError, match="not a SchoolFleet controller backup"):
        parse_manifest(b'{"format": "other"}')
    with pytest.raises(BackupError, match="format version 2"):
        parse_manifest(b'{"format": "schoolfleet-controller-backup", "version": 2}')
    with pytest.raises(BackupError, match="the manifest is damaged"):
        parse_manifest(b"[1, 2")


# --- adoption after a restore: values and times only ----------------------------------

MARK = RestoreMark(backup_taken_at=1000.0, restored_at=2000.0)


def _cert(issued_at: float) -> Presented:
    return Presented("panel-1", "s1", "ab12", issued_at, issued_at + 86400)


def _state(issued_at: float, revoked: bool = False) -> CertState:
    return CertState("panel-1", "s1", "0001", issued_at + 86400, issued_at, "", None, revoked)


@pytest.mark.parametrize(
    ("issued", "current", "adopted"),
    [
        # Enrolled after the backup, unknown to the restored store.
        (1500.0, None, True),
        # Renewed or enrolled again after the backup: later than the store's.
        (1500.0, _state(500.0), True),
        # Decommissioned before the backup, enrolled again after it.
        (1500.0, _state(500.0, revoked=True), True),
        # Issued before the backup: the store knows better (a replaced certificate).
        (900.0, None, False),
        (900.0, _state(500.0), False),
        # Issued after the restore by another controller with the same CA: never.
        (2500.0, None, False),
        # Older than the one the store has now (adopted or enrolled since).
        (1500.0, _state(1600.0), False),
        (1500.0, _state(1500.5), False),
    ],
)
def test_only_a_certificate_issued_between_backup_and_restore_and_newer_is_adopted(
    issued: float, current: CertState | None, adopted: bool
) -> None:
    assert adoptable(MARK, _cert(issued), current) is adopted
