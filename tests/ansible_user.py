"""Ansible's OS user for tests that run rollouts (root only): the account, a folder of
its own for each test's waves, and playbooks it can read.

The account is made once per machine (``useradd --system``, as the deployment notes
say) and kept. Where the venv's Python lives under a folder the account cannot enter
(pyenv under /root, 0700, on this machine), the account alone is given search (x) on
that folder by a POSIX ACL: it can then run the interpreter, and list nothing there.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from controller.rollouts.os_user import drop_argv, find_os_user, worker_env

ANSIBLE_USER = "schoolfleet-ansible"
HOME = Path("/var/lib") / ANSIBLE_USER
_PROJECT = Path(__file__).resolve().parent.parent
_ACL = "system.posix_acl_access"
_UNDEFINED_ID = 0xFFFFFFFF
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def ensure_ansible_user() -> str:
    """The account rollouts run Ansible as, made if missing, able to run the worker."""
    try:
        pwd.getpwnam(ANSIBLE_USER)
    except KeyError:
        _useradd()
    uid = pwd.getpwnam(ANSIBLE_USER).pw_uid
    # The interpreter, the venv's packages and the project's own code (CI checks out
    # wherever it likes, maybe under a closed folder too).
    targets = (Path(os.path.realpath(sys.executable)), Path(sys.prefix), _PROJECT)
    for folder in {f for t in targets for f in _closed_folders_on_the_way(t, uid)}:
        _allow_search(folder, uid)
    _check_worker_starts()
    return ANSIBLE_USER


def _useradd() -> None:
    home = ["--create-home", "--home-dir", str(HOME), "--shell", "/usr/sbin/nologin"]
    done = subprocess.run(
        ["useradd", "--system", "--user-group", *home, ANSIBLE_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    # 9: made meanwhile by a test running beside this one.
    if done.returncode not in (0, 9):
        raise AssertionError(f"useradd {ANSIBLE_USER}: {done.stderr.strip()}")


@contextlib.contextmanager
def ansible_work_dir() -> Iterator[Path]:
    """A folder (not made yet) for one test's waves, in the account's home; removed."""
    path = HOME / f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def readable_playbooks(source: Path) -> Iterator[Path]:
    """A copy of ``source`` the account can read (pytest's own temp folders are root's
    alone), in a folder of /tmp removed afterwards."""
    holder = Path(tempfile.mkdtemp(prefix="sf-books-", dir="/tmp"))
    try:
        holder.chmod(0o755)
        books = holder / "playbooks"
        shutil.copytree(source, books)
        for path in [books, *books.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield books
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _closed_folders_on_the_way(target: Path, uid: int) -> list[Path]:
    closed = []
    for folder in reversed(target.parents):
        info = folder.stat()
        if info.st_mode & 0o001 == 0 and info.st_uid != uid:
            closed.append(folder)
    return closed


def _allow_search(folder: Path, uid: int) -> None:
    """A POSIX ACL entry giving ``uid`` search (x) on ``folder``, the mode kept as it is."""
    with contextlib.suppress(OSError):
        if struct.pack("<HHI", _USER, 1, uid) in os.getxattr(folder, _ACL):
            return
    mode = folder.stat().st_mode
    entries = [
        (_USER_OBJ, mode >> 6 & 7, _UNDEFINED_ID),
        (_USER, 1, uid),
        (_GROUP_OBJ, mode >> 3 & 7, _UNDEFINED_ID),
        (_MASK, (mode >> 3 & 7) | 1, _UNDEFINED_ID),
        (_OTHER, mode & 7, _UNDEFINED_ID),
    ]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(folder, _ACL, acl)


def _check_worker_starts() -> None:
    user = find_os_user(ANSIBLE_USER)
    argv = drop_argv(user, [sys.executable, "-c", "import controller.rollouts.wave_worker"])
    done = subprocess.run(
        argv, env=worker_env(user), cwd="/", capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{ANSIBLE_USER} cannot run the wave worker: {done.stderr[-800:]}")
