"""A process that has imported Ansible once and forks a ready ``ansible-playbook`` for
each of a rollout's waves, so that a wave does not pay Ansible's start again (measured
here: 0.75 core-s for a fresh ansible-playbook, 0.26 forked from one that has imported
it).

The wave worker starts it (fork, before the worker starts any thread) and points the
``ansible-playbook`` ansible-runner runs at controller/rollouts/ansible_launch.py, which hands
this process its terminal over a unix socket in a folder of the worker's alone.

Ansible reads most of its configuration from the environment when it is imported, so
the zygote imports it with the environment of its first request and declines any later
request whose environment differs but for the few variables read at run time
(``_PER_RUN``): the launcher then runs the real ansible-playbook. The engine keeps that
environment the same for a rollout's waves (the same Ansible home and SSH files).

With Mitogen for Ansible, the zygote also starts Mitogen's connection multiplexers once
(controller/rollouts/mitogen_muxes.py), and every wave's ansible-playbook uses them: a wave no
longer pays for starting them and for preparing the modules they send to the hosts
(measured: 0.8 to 1.2 controller core-s a wave). Each wave closes its hosts' connections
at its end.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import logging
import os
import pkgutil
import selectors
import shutil
import signal
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.rollouts import mitogen_muxes

log = logging.getLogger(__name__)

# Read by Ansible (and ansible-runner's callback) when a run needs them, not at import.
_PER_RUN = frozenset({"AWX_ISOLATED_DATA_DIR", "SCHOOLFLEET_ANSIBLE_PID", "PWD", "OLDPWD"})
PID_FILE_ENV = "SCHOOLFLEET_ANSIBLE_PID"
# As controller/rollouts/ansible_launch.py names them.
ZYGOTE_ENV = "SCHOOLFLEET_ZYGOTE"
PLAYBOOK_ENV = "SCHOOLFLEET_ANSIBLE_PLAYBOOK"
_PR_SET_PDEATHSIG = 1
_MAX_ASK = 4 * 1024 * 1024
_PRELOAD = (
    "ansible.cli.playbook",
    "ansible.executor.playbook_executor",
    "ansible.executor.task_queue_manager",
    "ansible.inventory.manager",
    "ansible.plugins.strategy.linear",
    "ansible.vars.manager",
)


@dataclass(frozen=True, slots=True)
class Launcher:
    """How a wave's ansible-runner reaches the zygote: a folder holding an
    ``ansible-playbook`` (a script calling controller/rollouts/ansible_launch.py) to put first on
    PATH, and the socket."""

    bin_dir: Path
    socket: Path
    pid: int

    def env(self, work_dir: Path, env: dict[str, str]) -> dict[str, str]:
        """``env`` (the wave's Ansible environment) for a wave in ``work_dir``;
        ``ansible.pid`` there will name the forked ansible-playbook, which is no child
        of the launcher."""
        path = env.get("PATH", os.defpath)
        real = shutil.which("ansible-playbook", path=path) or "ansible-playbook"
        return {
            **env,
            "PATH": f"{self.bin_dir}{os.pathsep}{path}",
            ZYGOTE_ENV: str(self.socket),
            PLAYBOOK_ENV: real,
            PID_FILE_ENV: str(work_dir.absolute() / "ansible.pid"),
        }


def start_zygote(folder: Path) -> Launcher:
    """Forks the zygote, serving at ``folder``/zygote.sock (``folder`` 0700, this
    user's), and writes the launcher script there. Call it before starting any
    thread."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(mode=0o700)
    binary = bin_dir / "ansible-playbook"
    launch = Path(__file__).with_name("ansible_launch.py")
    # A Python script named ansible-playbook, so that ps shows one for each wave.
    run = f"runpy.run_path({str(launch)!r}, run_name='__main__')"
    binary.write_text(f"#!{sys.executable} -IS\nimport runpy\n{run}\n")
    binary.chmod(0o700)
    path = folder / "zygote.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    pid = os.fork()
    if pid:
        listener.close()
        return Launcher(bin_dir, path, pid)
    code = 0
    try:
        _die_with_parent()
        # Not the worker's pipes: the controller sees the worker's end by their end.
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        _Zygote(listener).serve()
        # Ansible's own clean-up of what its import made (its local tmp folder, which
        # every fork shared).
        atexit._run_exitfuncs()
    except BaseException:
        log.exception("the zygote failed")
        code = 1
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Zygote:
    """Accepts the launcher's requests; forks one ansible-playbook for each."""

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self._env: dict[str, str] | None = None
        self._children: dict[int, socket.socket] = {}
        self._stop = False

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop:
                if selector.select(timeout=0.1):
                    with contextlib.suppress(OSError):
                        conn, _ = self._listener.accept()
                        self._take(conn)
                self._reap()

    def _take(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            data, fds, _, _ = socket.recv_fds(conn, _MAX_ASK, 3)
            while not data.endswith(b"\n"):
                more = conn.recv(_MAX_ASK)
                if not more:
                    raise OSError("the request ended early")
                data += more
            ask: dict[str, Any] = json.loads(data)
            if len(fds) != 3:
                raise OSError(f"{len(fds)} descriptors, not 3")
        except (OSError, ValueError) as exc:
            log.warning("a launcher's request is not readable: %s", exc)
            conn.close()
            return
        try:
            declined = self._declined(ask["env"])
            if declined:
                conn.sendall(json.dumps({"declined": declined}).encode() + b"\n")
                conn.close()
                return
            pid = os.fork()
            if pid == 0:
                self._listener.close()
                _run_playbook(ask, fds, conn)
            self._children[pid] = conn
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError as exc:
            log.warning("a wave's ansible-playbook could not be forked: %s", exc)
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _declined(self, env: dict[str, str]) -> str:
        """Why ``env`` cannot run in this zygote ("" when it can); the first request
        imports Ansible with its environment."""
        if self._env is None:
            self._env = {k: v for k, v in env.items() if k not in _PER_RUN}
            os.environ.clear()
            os.environ.update(env)
            _import_ansible()
            mitogen = mitogen_muxes.wanted(env)
            if mitogen:
                mitogen_muxes.add_plugin_paths()
            _load_plugins()
            if mitogen:
                mitogen_muxes.start()
            return ""
        theirs = {k: v for k, v in env.items() if k not in _PER_RUN}
        differ = sorted(set(theirs.items()) ^ set(self._env.items()))
        if differ:
            return f"its environment differs in {', '.join(sorted({k for k, _ in differ}))}"
        return ""

    def _reap(self) -> None:
        # Its own children only: Mitogen's multiplexers are the zygote's too, and
        # Mitogen waits for them itself at the zygote's end.
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 255 << 8
            if done == 0:
                continue
            conn = self._children.pop(pid)
            with contextlib.suppress(OSError):
                code = os.waitstatus_to_exitcode(status)
                conn.sendall(
                    json.dumps({"exit": code if code >= 0 else 128 - code}).encode() + b"\n"
                )
            conn.close()


def _import_ansible() -> None:
    """What every ansible-playbook imports and loads before it reads its playbook."""
    # ansible-core's own imports warn of DSA; ansible-playbook would print it each run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _PRELOAD:
            importlib.import_module(name)


def _load_plugins() -> None:
    """Loads the plugins a wave loads, with this environment's plugin paths: loading
    one parses its documentation (YAML) for its settings, and finding one by name reads
    ansible.builtin's routing (YAML too). A fresh ansible-playbook pays that in its main
    process and again in every forked Ansible worker for the plugins only a worker
    loads (the connection and shell, with Mitogen): forks of this process find them
    loaded and their settings defined."""
    from ansible import constants
    from ansible.plugins import callback as callback_plugins
    from ansible.plugins import loader

    # The fork's ansible-playbook configures the collection loader again, finds it
    # configured (the same paths: they come from this environment) and says so.
    warnings.filterwarnings("ignore", message="AnsibleCollectionFinder has already been configured")
    loader.init_plugin_loader([])
    for name in constants.INVENTORY_ENABLED:
        loader.inventory_loader.get(name, class_only=True)
    # As ansible-playbook loads them: every one (each under its file's name).
    for each in (loader.connection_loader, loader.shell_loader, loader.become_loader):
        for _ in each.all(class_only=True):
            pass
    # ansible-core's own callbacks only (by the short name, as all() loads them):
    # ansible-runner's reads where a run's events go from the environment when it is
    # imported.
    for found in pkgutil.iter_modules(callback_plugins.__path__):
        loader.callback_loader.get(found.name, class_only=True)
    loader.strategy_loader.get(constants.DEFAULT_STRATEGY, class_only=True)


def _run_playbook(ask: dict[str, Any], fds: list[int], conn: socket.socket) -> None:
    """In the forked child: becomes ``ansible-playbook ARGS`` on the launcher's
    terminal and environment, and never returns."""
    code = 255
    try:
        conn.close()
        os.setsid()
        _die_with_parent()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.chdir(ask["cwd"])
        os.environ.clear()
        os.environ.update(ask["env"])
        if pid_file := os.environ.get(PID_FILE_ENV):
            Path(pid_file).write_text(f"{os.getpid()}\n")
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.argv = [
            os.environ.get("SCHOOLFLEET_ANSIBLE_PLAYBOOK", "ansible-playbook"),
            *ask["argv"],
        ]
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from ansible.cli.playbook import main

        # The zygote's exit handlers are its own (one removes the local tmp folder its
        # forks share); this run's, such as Mitogen's, which waits for its processes,
        # run at its end as they would in a fresh ansible-playbook.
        atexit._clear()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            mitogen_muxes.close_connections()
        atexit._run_exitfuncs()
    except BaseException:
        log.exception("ansible-playbook failed in the zygote's child")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
