"""One controller per data folder: ``serve`` holds a lock on DATA_DIR/controller.lock.

``restore`` takes the same lock: it never writes under a running controller, and no
controller starts on a half-restored folder. Two controllers on one store would each
believe its sessions are the truth. An advisory ``flock`` is released by the kernel when
the process ends, however it ends, so a ``kill -9`` leaves no stale lock to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from controller.datadir.private_files import private_dir
from controller.errors import ConfigError

LOCK_NAME = "controller.lock"


def hold(data_dir: Path) -> int:
    """Takes the data folder's lock for the life of this process; returns its fd (kept
    open on purpose). A second controller on the same folder is refused in one line."""
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"data_dir {data_dir}: another controller is running on it (lock {LOCK_NAME})"
        ) from None
    return fd


def hold_created(data_dir: Path) -> int:
    """``hold``, making the data folder (private to this account) first if needed."""
    try:
        private_dir(data_dir)
    except OSError as exc:
        raise ConfigError(f"data_dir {data_dir}: {exc.strerror}") from None
    return hold(data_dir)
