"""The controller's data folder is 0700 and its database files 0600, whatever the umask
it is started with and whatever modes an earlier version left behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.datadir.private_files import private_file, private_sqlite
from tests.procs import Controller, wait_until


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("loose_umask")
def test_a_new_database_and_its_folder_are_private(tmp_path: Path) -> None:
    db = tmp_path / "new" / "controller.db"
    private_sqlite(db)
    assert _mode(db.parent) == 0o700
    assert _mode(db) == 0o600


@pytest.mark.usefixtures("loose_umask")
def test_an_existing_folder_the_database_lives_in_is_left_alone(tmp_path: Path) -> None:
    # The database may live in a folder the controller does not own, such as /srv.
    tmp_path.chmod(0o755)
    private_sqlite(tmp_path / "controller.db")
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "controller.db") == 0o600


def test_a_link_where_a_file_should_be_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not ours")
    target.chmod(0o644)
    (tmp_path / "controller.db").symlink_to(target)
    with pytest.raises(OSError, match="link"):
        private_file(tmp_path / "controller.db")
    assert _mode(target) == 0o644


@pytest.mark.e2e
@pytest.mark.usefixtures("loose_umask")
def test_a_running_controller_keeps_its_data_to_itself(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    controller = Controller(data, env={"SCHOOLFLEET_CONTROLLER_DATA_DIR": str(data)})
    db = controller.database
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    try:
        controller.start()
        wait_until(lambda: all(f.exists() for f in files), 10, "the database's WAL files")
        assert _mode(data) == 0o700
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        controller.stop()

        # Files an older version left readable are narrowed at the next start.
        for path in (data, *files):
            if path.exists():
                path.chmod(0o755 if path.is_dir() else 0o644)
        controller.start()
        wait_until(lambda: all(f.exists() for f in files), 10, "the database's WAL files")
        assert _mode(data) == 0o700
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        # What the controller writes later is its own too, such as its ports file.
        assert _mode(data / "ports.json") & 0o077 == 0
    finally:
        controller.stop()
