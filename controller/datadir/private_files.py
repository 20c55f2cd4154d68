"""The controller's data stays its own: its folders 0700 and its files 0600, whatever
the umask it was started with and whatever modes an older version left behind.

The database holds every school's devices, people's token hashes and the audit log;
beside the CA's key (controller/enroll/pki.py keeps its own modes) it is what another local
user must never read.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Makes ``path`` (and missing parents) a folder only its owner can enter."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    # mkdir's mode is narrowed by the umask, and an existing folder keeps its own.
    os.chmod(path, DIR_MODE)


def private_file(path: Path, *, create: bool = True) -> None:
    """Makes ``path`` a file only its owner can read (created empty when missing and
    ``create``); a symbolic link there is refused rather than followed."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileNotFoundError:
        if create:
            raise
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def private_sqlite(path: Path) -> None:
    """A SQLite file and its -wal and -shm companions, private before SQLite opens them.

    SQLite creates the companions with the database file's own mode, so a private main
    file keeps new companions private; existing ones are narrowed here. A missing parent
    folder is made private; an existing one is left as it is (the database may live in
    a folder the controller does not own).
    """
    if not path.parent.exists():
        private_dir(path.parent)
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            private_file(path.with_name(path.name + suffix), create=False)
