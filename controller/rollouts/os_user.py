"""The OS user Ansible runs as: not the controller's, so that nothing a playbook does
on the controller (a lookup, a delegated task) can read the controller's data folder,
its CA key or its database.

Each wave's worker is started through util-linux's ``setpriv``, which sets the user's
uid and gid, drops every supplementary group and capability and sets no_new_privs
before it execs the worker: the controller needs CAP_SETUID and CAP_SETGID for that
(root has them; deploy/systemd gives the controller's own user them as ambient
capabilities), and no new privileges, so NoNewPrivileges=yes holds. ``setpriv`` is
chosen over a ``preexec_fn`` that calls setuid: the drop happens in a plain exec of a
small, audited tool, with no Python run between fork and exec in a threaded process.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.errors import RolloutRefused

log = logging.getLogger(__name__)

_CAP_SETPCAP = 8
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass(frozen=True, slots=True)
class OsUser:
    """An account of this machine, as the password database has it."""

    name: str
    uid: int
    gid: int
    home: Path


def find_os_user(name: str) -> OsUser:
    """The account ``rollout_os_user`` names; RolloutRefused (one line) if it does not
    exist or is root or the controller's own user (the drop would then be no drop)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RolloutRefused(
            f"rollouts run Ansible as OS user {name!r}, which does not exist: create it"
            f" (useradd --system --user-group --create-home --home-dir /var/lib/{name}"
            f' {name}), or set rollout_os_user = "" on a lab machine (unsafe)'
        ) from None
    if entry.pw_uid in (0, os.geteuid()):
        raise RolloutRefused(
            f"rollout_os_user {name!r} is root or the controller's own user: give Ansible"
            " an account of its own"
        )
    return OsUser(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def default_work_dir(name: str, data_dir: Path) -> Path:
    """Where waves write when ``rollout_work_dir`` is not set: ``rollouts`` in the OS
    user's home (``/var/lib/NAME`` until the account exists), or, with no OS user, in
    the controller's data folder."""
    if not name:
        return data_dir / "rollouts"
    try:
        return Path(pwd.getpwnam(name).pw_dir) / "rollouts"
    except KeyError:
        return Path("/var/lib") / name / "rollouts"


def drop_argv(user: OsUser, argv: list[str]) -> list[str]:
    """``argv`` run as ``user``: its uid and gid, no other group, no capability, and
    no way to gain one back (no_new_privs: setuid programs such as sudo do nothing)."""
    setpriv = shutil.which("setpriv", path=_SAFE_PATH)
    if setpriv is None:
        raise RolloutRefused(
            "setpriv (util-linux) is not installed: waves cannot drop to their OS user"
        )
    drop = [
        setpriv,
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--no-new-privs",
    ]
    # Emptying the bounding set needs CAP_SETPCAP; without it, no_new_privs and the
    # empty inheritable and ambient sets already leave the worker no capability.
    if _effective_caps() >> _CAP_SETPCAP & 1:
        drop.append("--bounding-set=-all")
    return [*drop, "--", *argv]


def worker_env(user: OsUser) -> dict[str, str]:
    """The worker's whole environment: nothing of the controller's is passed on."""
    return {
        "PATH": os.environ.get("PATH", _SAFE_PATH),
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "LANG": "C.UTF-8",
    }


def _effective_caps() -> int:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def rollout_dirs(os_user: str, work_dir: Path, data_dir: Path) -> tuple[Path, Path]:
    """Where Ansible writes waves (``work_dir``, or :func:`default_work_dir`) and where
    its ssh keeps control sockets: a short path in /tmp (108 bytes at most for a socket)
    that the worker makes as ``os_user``; made here when Ansible runs as the controller.
    Says in the log, at start, when ``os_user`` is missing: rollouts are then refused."""
    ansible_dir = work_dir if work_dir != Path() else default_work_dir(os_user, data_dir)
    if not os_user:
        log.warning("rollout_os_user is empty: Ansible runs as the controller's own user (unsafe)")
        return ansible_dir, Path(tempfile.mkdtemp(prefix="sf-ssh-", dir="/tmp"))
    try:
        find_os_user(os_user)
    except RolloutRefused as exc:
        log.warning("%s", exc)
    # A name no one can guess; the worker makes it 0700 and refuses one it does not own.
    return ansible_dir, Path("/tmp") / f"sf-ssh-{secrets.token_hex(6)}"  # noqa: S108
