"""Runs one wave of a rollout: ansible-playbook through ansible-runner on the wave's
hosts, in an environment that owes nothing to this machine's Ansible or ssh
configuration; and stops the ssh
connections Ansible keeps open between waves when the controller shuts down.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import psutil
from ansible_runner.exceptions import AnsibleRunnerException

from common.errors import SettingError
from controller.rollouts.events import NO_RESULT, WaveTally, first_error_in, one_line
from controller.rollouts.playbook_vars import unsafe_vars
from controller.rollouts.zygote import Launcher
from inventory.rollouts import STRATEGIES, HostResult

log = logging.getLogger(__name__)

# ssh binds a master's socket at <dir>/<10 hex chars, Ansible's>.<16 random chars> and
# renames it after; a unix socket path is at most 107 bytes (108 with its NUL).
CONTROL_PATH_DIR_MAX = 107 - len("/0123456789.0123456789abcdef")
# How often ansible-runner asks whether to stop: a cancel takes effect within ~1 s.
_POLL_SECONDS = 0.5
_FORKS_CAP = 20
# In a wave's folder: ansible-runner's artifacts/<_IDENT>, and the extra vars file.
_IDENT = "run"
_EXTRA_VARS = "extra_vars.json"
# In a wave's folder: the pid of an ansible-playbook forked from a zygote.
PID_FILE = "ansible.pid"


def default_forks() -> int:
    """Twice the cores this process may use, at least 2 and at most 20.

    A fork mostly waits on a device, but each still costs the controller a Python worker
    and an ssh: on 2 cores (TECH-NOTES, 50 hosts, two tasks) forks 5 took ~59 s, 20
    ~69 s and 50 ~85 s. Those hosts shared the same 2 cores, which overstates the cost
    for real devices; still, a few per core, capped, is the safe side of that curve.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(2, min(2 * cores, _FORKS_CAP))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerSettings:
    """How the controller runs Ansible: as whom, with which key, trusting which host
    keys, how many hosts at once, and for how long."""

    forks: int = field(default_factory=default_forks)
    remote_user: str
    private_key_file: Path | None = None
    # The only host keys trusted; nothing from ~/.ssh or /etc/ssh.
    known_hosts: Path
    # Where ssh keeps its ControlPersist sockets: short (see CONTROL_PATH_DIR_MAX).
    control_path_dir: Path
    # Longest a wave may run; then it is stopped and its unfinished hosts fail.
    timeout: float = 3600.0
    ssh_timeout: int = 10
    pipelining: bool = True
    # Seconds an idle ssh connection is kept for the next task or wave; 0: none kept.
    control_persist: int = 60
    ansible_bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    # The devices' Python (M OS is Debian-based); "auto_silent" makes Ansible look for
    # one on every host first, one more remote command per host and wave.
    python_interpreter: str = "/usr/bin/python3"
    # The OS user a wave's worker drops to (controller/rollouts/os_user.py); "": the
    # controller's own, for a lab only.
    os_user: str = ""
    # Ansible's strategy: "mitogen" (Mitogen for Ansible's mitogen_linear: one Python
    # per host kept across tasks, modules sent over it) or "linear" (Ansible's own).
    strategy: str = "mitogen"

    def __post_init__(self) -> None:
        if self.forks < 1:
            raise SettingError(f"'forks' must be at least 1, got {self.forks}", "forks")
        if self.timeout <= 0 or self.ssh_timeout <= 0:
            key = "timeout" if self.timeout <= 0 else "ssh_timeout"
            raise SettingError(f"{key!r} must be above 0 seconds", key)
        if self.control_persist < 0:
            raise SettingError("'control_persist' must be 0 or more seconds", "control_persist")
        if not self.remote_user:
            raise SettingError("'remote_user' is empty", "remote_user")
        if self.strategy not in STRATEGIES:
            raise SettingError(
                f"'strategy' must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}",
                "strategy",
            )
        if self.strategy == "mitogen" and mitogen_strategy_dir() is None:
            raise SettingError(
                "'strategy' mitogen needs Mitogen for Ansible: pip install 'mitogen>=0.3.54'",
                "strategy",
            )
        control = self.control_path_dir
        if not control.is_absolute():
            raise SettingError(f"'control_path_dir' {control} must be absolute", "control_path_dir")
        if len(os.fsencode(control)) > CONTROL_PATH_DIR_MAX:
            raise SettingError(
                f"'control_path_dir' {control} is too long for ssh's socket paths: use at"
                f" most {CONTROL_PATH_DIR_MAX} bytes, e.g. /run/schoolfleet/ssh",
                "control_path_dir",
            )


def mitogen_strategy_dir() -> Path | None:
    """The folder of Mitogen for Ansible's strategy plugins, if it is installed."""
    found = importlib.util.find_spec("ansible_mitogen")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / "plugins" / "strategy"


def ansible_env(settings: RunnerSettings, home: Path) -> dict[str, str]:
    """The variables Ansible runs with; makes ``home`` (Ansible's home, with an empty
    ansible.cfg so that nothing is read from /etc/ansible, ~ or the working folder)."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = home / "ansible.cfg"
    config.touch(mode=0o600)
    q = shlex.quote
    # ssh takes the first value it is given: these win over anything Ansible adds later
    # (StrictHostKeyChecking=no, were host key checking ever turned off).
    ssh_args = [
        "-F /dev/null",
        f"-o UserKnownHostsFile={q(str(settings.known_hosts))}",
        "-o GlobalKnownHostsFile=/dev/null",
        "-o StrictHostKeyChecking=yes",
        "-o BatchMode=yes",
    ]
    # Mitogen keeps one connection per host itself (and gives ssh no ControlPath).
    if settings.control_persist and settings.strategy != "mitogen":
        ssh_args += ["-o ControlMaster=auto", f"-o ControlPersist={settings.control_persist}s"]
    if settings.private_key_file is not None:
        ssh_args.append("-o IdentitiesOnly=yes")
    env = {
        "PATH": f"{settings.ansible_bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_FORKS": str(settings.forks),
        "ANSIBLE_PIPELINING": str(settings.pipelining),
        "ANSIBLE_SSH_ARGS": " ".join(ssh_args),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(settings.control_path_dir),
        # Facts only where a play asks for them (they cost ~5x the run).
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_REMOTE_USER": settings.remote_user,
        "ANSIBLE_TIMEOUT": str(settings.ssh_timeout),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PYTHON_INTERPRETER": settings.python_interpreter,
    }
    if settings.private_key_file is not None:
        env["ANSIBLE_PRIVATE_KEY_FILE"] = str(settings.private_key_file)
    if settings.strategy == "mitogen":
        env["ANSIBLE_STRATEGY"] = "mitogen_linear"
        env["ANSIBLE_STRATEGY_PLUGINS"] = str(mitogen_strategy_dir())
    return env


def inventory_vars(settings: RunnerSettings) -> dict[str, Any]:
    """Variables for every host of a wave that only an inventory can set."""
    if settings.strategy == "mitogen":
        # Mitogen turns on ssh's compression, and its modules travel zlib-compressed
        # already: 460 KB of them cost the controller's ssh 30 ms compressed, 17 ms not
        # (measured here); the hosts are on the school's network, not a modem.
        return {"mitogen_ssh_compression": False}
    return {}


def with_vars(inventory: Mapping[str, Any], group_vars: Mapping[str, Any]) -> dict[str, Any]:
    """``inventory`` (ansible-runner's shape) with ``group_vars`` set for all hosts."""
    top = dict(inventory.get("all", {}))
    if group_vars:
        top["vars"] = {**top.get("vars", {}), **group_vars}
    return {**inventory, "all": top}


@dataclass(frozen=True, slots=True)
class WaveJob:
    """One wave to run: the checked playbook, the wave's inventory in ansible-runner's
    form (``{"all": {"hosts": {device_id: vars}}}``), its hosts (device ids), extra vars,
    and a folder that must not exist yet (it keeps the artifacts). Results carry
    ``wave`` and, where ``schools`` has them, school ids."""

    playbook: Path
    inventory: Mapping[str, Any]
    hosts: Sequence[str]
    work_dir: Path
    settings: RunnerSettings
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    wave: int | None = None
    schools: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WaveRun:
    """How a wave's run ended, and every host's result."""

    # ansible-runner's words: successful, failed, canceled, timeout.
    status: str
    rc: int | None
    results: dict[str, HostResult]
    duration: float
    artifact_dir: Path
    # Ansible's error when it ended without results (a playbook it could not run).
    error: str = ""


def run_wave(
    job: WaveJob,
    cancelled: Callable[[], bool],
    on_host: Callable[[HostResult], None] | None = None,
    launcher: Launcher | None = None,
) -> WaveRun:
    """Runs ``job`` and returns once ansible-playbook and every process under it are gone.

    Blocking: call it in a thread. ``cancelled`` is asked twice a second; once it says
    yes (or the wave's timeout passes) the run is stopped. ``on_host`` hears, in this
    thread, each host's result when it is known, and again if the run's end revises it
    (a failure a block's rescue handled). Ansible's own failures become results.
    With a ``launcher``, ansible-playbook is forked from its zygote.
    """
    listed = job.inventory.get("all", {}).get("hosts", {})
    if missing := [h for h in job.hosts if h not in listed]:
        raise ValueError(f"hosts missing from the wave's inventory: {', '.join(missing[:5])}")
    job.work_dir.mkdir(mode=0o700, parents=True)
    tally = WaveTally(job.wave, job.schools)
    reported: dict[str, HostResult] = {}

    def report(result: HostResult) -> None:
        reported[result.device_id] = result
        if on_host is not None:
            try:
                on_host(result)
            except Exception:  # the run goes on; the engine's bug is logged
                log.exception("wave=%s device=%s on_host failed", job.wave, result.device_id)

    def on_event(event: dict[str, Any]) -> bool:
        result = tally.feed(event)
        if result is not None and result.device_id in job.hosts:
            report(result)
        return True

    log.info("wave=%s playbook=%s hosts=%d starting", job.wave, job.playbook, len(job.hosts))
    started = time.monotonic()
    status, rc, error = _run_ansible(job, _Stopper(job, cancelled), on_event, launcher)
    artifact_dir = job.work_dir / "artifacts" / _IDENT
    if not tally.finished and not error:
        error = _first_error(artifact_dir / "stdout")
    reason = f"{NO_RESULT}: {error}" if error else NO_RESULT
    if status == "timeout":
        reason = f"the wave timed out after {job.settings.timeout:g} s"
    results = tally.results(job.hosts, cancelled=status == "canceled", reason=reason)
    for name, result in results.items():
        if reported.get(name) != result:
            report(result)
    duration = time.monotonic() - started
    log.info(
        "wave=%s status=%s rc=%s hosts=%d bad=%d duration=%.1fs artifacts=%s",
        job.wave,
        status,
        rc,
        len(results),
        sum(r.outcome.bad for r in results.values()),
        duration,
        artifact_dir,
    )
    return WaveRun(status, rc, results, duration, artifact_dir, error)


class _Stopper:
    """ansible-runner's cancel_callback: says whether to stop (asked, or out of time),
    and stops this wave's processes itself. The runner's own stop kills only
    ansible-playbook's process group: its workers (each in a session of its own) and
    their ssh would run on."""

    def __init__(self, job: WaveJob, cancelled: Callable[[], bool]) -> None:
        self._cancelled = cancelled
        self._wave = job.wave
        self._deadline = time.monotonic() + job.settings.timeout
        self.process = _AnsibleProcess(
            f"@{(job.work_dir / _EXTRA_VARS).absolute()}", job.work_dir / PID_FILE
        )
        self.why = ""  # "canceled" or "timeout" once decided

    def __call__(self) -> bool:
        if not self.why:
            try:
                asked = bool(self._cancelled())
            except Exception:
                log.exception("wave=%s cancelled() failed; stopping the wave", self._wave)
                asked = True
            if asked:
                self.why = "canceled"
            elif time.monotonic() > self._deadline:
                self.why = "timeout"
        if self.why:
            self.process.stop()
        return bool(self.why)


def _run_ansible(
    job: WaveJob,
    stopper: _Stopper,
    on_event: Callable[[dict[str, Any]], bool],
    launcher: Launcher | None,
) -> tuple[str, int | None, str]:
    """One ansible-runner run of the job: (status, rc, error)."""
    # One Ansible home for a rollout's waves (the folder above each wave's): a zygote
    # forks ansible-playbook only for the environment it imported Ansible with.
    env = ansible_env(job.settings, job.work_dir.parent / "ansible-home")
    if launcher is not None:
        env = launcher.env(job.work_dir, env)
    # Files, not arguments: extra vars and host vars may hold secrets, and ps shows argv.
    # Every extra var came from a person: marked unsafe, Ansible never templates it.
    extra = _write_private(job.work_dir / _EXTRA_VARS, unsafe_vars(job.extra_vars))
    inventory = _write_private(
        job.work_dir / "inventory.json", with_vars(job.inventory, inventory_vars(job.settings))
    )
    # ansible-runner 2.4 drops a settings= argument unless env/settings exists (its
    # prepare_env replaces it with {} when that file is missing): so the file it is.
    (job.work_dir / "env").mkdir(mode=0o700)
    _write_private(job.work_dir / "env" / "settings", {"pexpect_timeout": _POLL_SECONDS})
    try:
        runner = ansible_runner.run(
            private_data_dir=str(job.work_dir),
            ident=_IDENT,
            playbook=str(job.playbook.absolute()),
            inventory=str(inventory),
            extravars=str(extra),
            envvars=env,
            forks=job.settings.forks,
            quiet=True,
            suppress_env_files=True,
            # Not ansible-runner's per-run jsonfile cache: its folder is a setting Ansible
            # reads at import; no fact is kept between runs anyway.
            fact_cache_type="memory",
            event_handler=on_event,
            # No runner timeout: it would stop the run as the runner's cancel does.
            cancel_callback=stopper,
        )
    except (AnsibleRunnerException, OSError) as exc:
        return "failed", None, one_line(f"ansible-runner: {exc}")
    finally:
        # Whatever happened, nothing of this wave's ansible outlives run_wave.
        stopper.process.stop()
    rc = runner.rc if isinstance(runner.rc, int) else None
    return stopper.why or str(runner.status), rc, ""


def stop_control_masters(control_path_dir: Path, timeout: float = 10) -> list[int]:
    """Stops the ssh ControlPersist masters whose sockets are in ``control_path_dir``
    (``ssh -O exit``, then by pid if one lingers) and removes sockets no master answers
    on. Returns the masters' pids; they are gone when it returns."""
    if not control_path_dir.is_dir():
        return []
    masters: list[psutil.Process] = []
    for sock in sorted(control_path_dir.iterdir()):
        if not sock.is_socket():
            continue
        # A literal ControlPath (ssh expands %); the host name given is then unused.
        base = ["ssh", "-F", "/dev/null", "-o", f"ControlPath={str(sock).replace('%', '%%')}"]
        found = re.search(r"pid=(\d+)", _ssh_output([*base, "-O", "check", "master"]))
        if found is None:
            sock.unlink(missing_ok=True)
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            masters.append(psutil.Process(int(found.group(1))))
        _ssh_output([*base, "-O", "exit", "master"])
    if left := _wait_gone(masters, timeout):
        log.warning("ssh masters=%s ignored -O exit; killing them", [p.pid for p in left])
        _kill(left)
    log.info("stopped ssh masters=%s in %s", [p.pid for p in masters], control_path_dir)
    return [p.pid for p in masters]


def stop_orphaned_wave(work_dir: Path) -> int:
    """Stops this user's ansible-playbook of the wave in ``work_dir`` (or of a rerun in
    ``work_dir.N``) and everything under it, whose worker has gone; returns how many
    such trees it stopped. ansible-runner has it ignore SIGHUP, so it would run on."""
    prefixes = (f"@{work_dir.absolute()}/", f"@{work_dir.absolute()}.")
    suffix = f"/{_EXTRA_VARS}"
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline", "uids", "ppid"]):
        uids, argv = proc.info["uids"], proc.info["cmdline"] or []
        if uids is None or uids.real != os.getuid():
            continue
        if any(a.startswith(prefixes) and a.endswith(suffix) for a in argv):
            found[proc.pid] = proc
    # Ansible's own workers carry the same arguments: stop each tree from its root.
    roots = [p for p in found.values() if p.info["ppid"] not in found]
    for pid_file in [work_dir / PID_FILE, *work_dir.parent.glob(f"{work_dir.name}.*/{PID_FILE}")]:
        if (forked := _forked(pid_file)) is not None:
            roots.insert(0, forked)
    for root in roots:
        _stop_tree(root)
    return len(roots)


class _AnsibleProcess:
    """A wave's ansible-playbook, found among this process's children by an argument
    only it has (or, forked from a zygote, by the pid it wrote in ``pid_file``), and
    stopped with every process under it."""

    def __init__(self, marker: str, pid_file: Path) -> None:
        self._marker = marker
        self._pid_file = pid_file
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if self._marker in child.cmdline():
                    self._stopped = True
                    # The forked one first: the launcher waits for it.
                    if (forked := _forked(self._pid_file)) is not None:
                        _stop_tree(forked)
                    _stop_tree(child)
                    return


def _forked(pid_file: Path) -> psutil.Process | None:
    """The ansible-playbook a zygote forked for a wave, while it runs as this user."""
    try:
        proc = psutil.Process(int(pid_file.read_text()))
        if proc.uids().real == os.getuid() and proc.create_time() <= pid_file.stat().st_mtime + 1:
            return proc
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def _stop_tree(root: psutil.Process) -> None:
    """SIGSTOP ``root`` and its descendants, pass by pass until no new one shows up (a
    stopped process forks no more), then SIGKILL them all. Ansible's workers each start
    a session of their own, and so do their ssh, so no process group holds them all."""
    frozen: dict[int, psutil.Process] = {}
    todo = [root]
    while todo:
        for proc in todo:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.suspend()
                frozen[proc.pid] = proc
        time.sleep(0.01)
        todo = [
            proc
            for proc in psutil.process_iter(["ppid"])
            if proc.info["ppid"] in frozen and proc.pid not in frozen
        ]
    _kill(list(frozen.values()))
    log.info("stopped ansible pid=%d and %d processes under it", root.pid, len(frozen) - 1)


def _kill(procs: Iterable[psutil.Process]) -> None:
    procs = list(procs)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    if left := _wait_gone(procs, 5):
        log.error("processes still running after SIGKILL: %s", [p.pid for p in left])


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Waits up to ``timeout`` for ``procs`` to end (a zombie has ended: the orphans'
    reaper collects it); returns those still running."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in procs if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ssh_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stderr + done.stdout


def _write_private(path: Path, value: Mapping[str, Any]) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(value, out)
    return path.absolute()


def _first_error(stdout: Path) -> str:
    try:
        text = stdout.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return one_line(first_error_in([line.strip() for line in text.splitlines()]))
