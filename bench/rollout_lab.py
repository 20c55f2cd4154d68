"""The rollout benchmark's measured runs, on a lab of SSH hosts registered with a
real controller (bench/rollout.py sets it up).

A measured run applies the benchmark's playbook to every host, one of seven ways, and
returns its wall time and the CPU each side used. Every run starts cold: afterwards the
ssh ControlPersist masters it left are stopped (``ssh -O exit``, by their sockets), so
the next run opens every connection anew.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.observe import machine_busy_seconds
from bench.procs import RunFailed
from bench.scale_pg import read_stats, subtree_cpu
from controller.rollouts.runner import (
    RunnerSettings,
    ansible_env,
    default_forks,
    inventory_vars,
    with_vars,
)
from inventory.rollouts import RolloutState
from tests.procs import Controller, schoolctl, wait_until
from tests.ssh_hosts import SshHost

log = logging.getLogger("bench")

BIN = Path(sys.executable).parent
PLAYBOOK_NAME = "bench.yml"
TASKS = 2
# No `gather_facts`, on purpose: Ansible's default (gathering=implicit) then gathers
# facts first; the engine's settings (gathering=explicit) do not.
PLAYBOOK = """\
- name: Mark the hosts
  hosts: all
  tasks:
    - name: The config folder exists
      ansible.builtin.file:
        path: /etc/schoolfleet
        state: directory
        mode: "0755"
    - name: The marker holds this run's value
      ansible.builtin.copy:
        dest: /etc/schoolfleet/marker
        content: "{{ marker }}\\n"
        mode: "0644"
"""
# bench.vars.yml: the one variable a rollout of it sets.
PLAYBOOK_VARS = 'marker: {type: str, pattern: "[A-Za-z0-9._-]{1,64}"}\n'
SCHOOL = "b1"  # every host's school, for --select
ANSIBLE_DEFAULT_FORKS = 5
_RUN_TIMEOUT = 900.0
_RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)
_WAVES = "schoolfleet_rollout_wave_duration_seconds"


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of running the playbook on every host."""

    key: str
    label: str
    # For the engine: `schoolctl rollout start` options; empty for plain ansible-playbook.
    options: tuple[str, ...] = ()
    # Ansible's strategy (RunnerSettings.strategy; the controller's rollout_strategy).
    strategy: str = "linear"

    @property
    def engine(self) -> bool:
        return bool(self.options)


PLAIN_DEFAULTS = Variant("plain_defaults", "plain ansible-playbook, Ansible's defaults")
PLAIN_ENGINE = Variant("plain_engine", "plain ansible-playbook, the engine's settings, linear")
# The agents stop once the hosts are registered: the hosts are offline by then.
_ONE = ("--canary", "100%", "--wave-size", "100%", "--max-fail", "100%", "--include-offline")
_TEN = ("--canary", "1", "--wave-size", "10%", "--max-fail", "100%", "--include-offline")
ONE_WAVE = Variant("engine_one_wave", "engine, one wave, linear", _ONE)
WAVES = Variant("engine_waves", "engine, in waves, linear", _TEN)
PLAIN_MITOGEN = Variant(
    "plain_mitogen", "plain ansible-playbook, the engine's settings, Mitogen", strategy="mitogen"
)
ONE_WAVE_MITOGEN = Variant("engine_one_wave_mitogen", "engine, one wave, Mitogen", _ONE, "mitogen")
WAVES_MITOGEN = Variant("engine_waves_mitogen", "engine, in waves, Mitogen", _TEN, "mitogen")
VARIANTS = (
    PLAIN_DEFAULTS,
    PLAIN_ENGINE,
    ONE_WAVE,
    WAVES,
    PLAIN_MITOGEN,
    ONE_WAVE_MITOGEN,
    WAVES_MITOGEN,
)


@dataclass(slots=True)
class RunResult:
    """One measured run of one variant."""

    variant: str
    run: int
    hosts: int
    forks: int
    # From the start (engine: `rollout start` returning) to every host's result.
    seconds: float
    # ansible-playbook and everything under it, and the ssh masters it left; for the
    # engine, the whole controller process tree over the same window.
    controller_cpu: float
    masters_cpu: float
    masters: int  # ssh masters left running, stopped after the run
    # The hosts' sshd and everything under them (sessions, modules), up to the sessions' end.
    sshd_cpu: float
    # The whole machine's busy time from the start until the sessions ended.
    busy_cpu: float
    busy_seconds: float  # how long that window was
    hosts_ok: int  # ok or changed, by Ansible's recap (engine: the rollout's outcomes)
    markers: int  # hosts whose marker file holds this run's value afterwards
    waves: int = 1
    waves_seconds: float | None = None  # engine: the waves' durations, summed
    start_seconds: float | None = None  # engine: `schoolctl rollout start`
    start_cpu: float | None = None  # engine: the controller's CPU meanwhile
    rollout_id: int | None = None
    state: str = ""
    error: str = ""

    @property
    def other_cpu(self) -> float:
        """Everything else on the machine meanwhile: the benchmark's own clean-up, noise."""
        return self.busy_cpu - self.controller_cpu - self.sshd_cpu

    def per_host_task(self, cpu: float) -> float:
        return cpu / (self.hosts * TASKS)


@dataclass
class Lab:
    """The hosts, the controller they are registered with, and the playbook."""

    work: Path
    hosts: list[SshHost]
    controller: Controller
    playbook: Path
    # Where the controller's Ansible writes its waves (rollout_work_dir).
    ansible_dir: Path

    def settings(self, control_dir: Path, strategy: str = "linear") -> RunnerSettings:
        """The RunnerSettings the controller builds from its default settings."""
        return RunnerSettings(
            forks=default_forks(),
            remote_user="root",
            private_key_file=self.hosts[0].key_file,
            known_hosts=self.hosts[0].known_hosts,
            control_path_dir=control_dir,
            strategy=strategy,
        )


def run_variant(lab: Lab, variant: Variant, run: int) -> RunResult:
    """One cold, measured run of ``variant`` on every host."""
    marker = f"{variant.key}-{run}-{time.time_ns()}"
    if variant.engine:
        return _run_engine(lab, variant, run, marker)
    return _run_plain(lab, variant, run, marker)


def _run_plain(lab: Lab, variant: Variant, run: int, marker: str) -> RunResult:
    # Short, in /tmp: ssh's control sockets live under it.
    home = Path(tempfile.mkdtemp(prefix="sf-rb-", dir="/tmp"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
        control_dir = home / "cp"
        hostvars: dict[str, dict[str, str]]
        if variant is PLAIN_DEFAULTS:
            config = home / "ansible.cfg"
            config.touch()
            env |= {
                "ANSIBLE_CONFIG": str(config),
                "ANSIBLE_HOME": str(home),
                # Where, not how: its default is ~/.ansible/cp whatever ANSIBLE_HOME says,
                # and this machine's home is not the benchmark's to write in.
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
            }
            # Host key checking and the run's key through inventory variables; Python
            # discovered as by default (not named, as SshHost.ansible_vars does).
            hostvars = {h.name: _default_vars(h) for h in lab.hosts}
            group_vars: dict[str, Any] = {}
            forks = ANSIBLE_DEFAULT_FORKS
        else:
            control_dir.mkdir(mode=0o700)
            settings = lab.settings(control_dir, variant.strategy)
            env |= ansible_env(settings, home / "ansible-home")
            hostvars = {h.name: {"ansible_host": h.address} for h in lab.hosts}
            group_vars = inventory_vars(settings)
            forks = settings.forks
        inventory = home / "inventory.json"
        inventory.write_text(json.dumps(with_vars({"all": {"hosts": hostvars}}, group_vars)))
        extra = home / "extra.json"
        extra.write_text(json.dumps({"marker": marker}))
        argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", f"@{extra}"]
        argv.append(str(lab.playbook))
        output = home / "output.txt"
        busy0, sshd0, window = machine_busy_seconds(), sshd_cpu(lab.hosts), time.monotonic()
        seconds, cpu, code = _timed(argv, env, home, output)
        masters, stopped = _settle(lab, {control_dir})
        text = output.read_text(errors="replace")
        recap = {m[0]: m[1:] for m in _RECAP.findall(text)}
        ok = sum(1 for v in recap.values() if v[2] == "0" and v[3] == "0")
        error = "" if code == 0 else f"ansible-playbook exit {code}: {_tail(text)}"
        return RunResult(
            variant=variant.key,
            run=run,
            hosts=len(lab.hosts),
            forks=forks,
            seconds=seconds,
            controller_cpu=cpu + masters,
            masters_cpu=masters,
            masters=stopped,
            sshd_cpu=sshd_cpu(lab.hosts) - sshd0,
            busy_cpu=machine_busy_seconds() - busy0,
            busy_seconds=time.monotonic() - window,
            hosts_ok=ok,
            markers=markers(lab.hosts, marker),
            error=error,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _default_vars(host: SshHost) -> dict[str, str]:
    found = host.ansible_vars()
    del found["ansible_python_interpreter"]
    return found


def _timed(
    argv: list[str], env: dict[str, str], cwd: Path, output: Path
) -> tuple[float, float, int]:
    """Runs ``argv``; returns its wall time, the CPU of it and every process under it that
    it waited for (wait4's rusage), and its exit code."""
    with output.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = started + _RUN_TIMEOUT
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                _kill_tree(proc.pid)
                raise RunFailed(f"{argv[0]} did not finish in {_RUN_TIMEOUT:g}s")
            time.sleep(0.02)
        seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_utime + usage.ru_stime, proc.returncode


def _run_engine(lab: Lab, variant: Variant, run: int, marker: str) -> RunResult:
    controller = lab.controller
    assert controller.proc is not None
    pid = controller.proc.pid
    cpu_start = _controller_cpu(pid)
    asked = time.monotonic()
    args = ["rollout", "start", PLAYBOOK_NAME, "--select", f"school={SCHOOL}", *variant.options]
    args += ["--strategy", variant.strategy]
    args += ["--extra-vars", json.dumps({"marker": marker}), "--json"]
    started = schoolctl(controller.address, *args, timeout=120)
    begun, begun_at = time.monotonic(), time.time()
    if started.code != 0:
        raise RunFailed(f"schoolctl rollout start: exit {started.code}: {started.err.strip()}")
    rollout_id = int(started.json()["rollout_id"])
    busy0, sshd0, window = machine_busy_seconds(), sshd_cpu(lab.hosts), time.monotonic()
    cpu0, before = _controller_cpu(pid), controller.metrics()

    _wait_ended(controller, rollout_id)
    cpu1 = _controller_cpu(pid)
    after = controller.metrics()
    status = schoolctl(controller.address, "rollout", "status", str(rollout_id), "--json")
    info: dict[str, Any] = status.json() if status.out.strip() else {}
    # Timed to the rollout's end as the controller stored it (the same clock).
    finished = info.get("finished_at") or ""
    seconds = (
        dt.datetime.fromisoformat(finished).timestamp() - begun_at
        if finished
        else time.monotonic() - begun
    )
    masters, stopped = _settle(lab, engine_control_dirs(lab.ansible_dir, rollout_id))
    counts = info.get("counts", {})
    state = str(info.get("state", ""))
    error = "" if state == "done" else f"rollout {rollout_id} {state}: {info.get('reason', '')}"
    bad = [h for h in info.get("hosts", []) if h.get("outcome") not in ("ok", "changed")]
    if bad:
        first = bad[0]
        error += (
            f"{'; ' if error else ''}{len(bad)} host(s) not ok, e.g. {first['device_id']}"
            f" {first['outcome']} in wave {first.get('wave')}: {first.get('task')}:"
            f" {first.get('message')}"
        )
    return RunResult(
        variant=variant.key,
        run=run,
        hosts=len(lab.hosts),
        forks=default_forks(),
        seconds=seconds,
        controller_cpu=cpu1 - cpu0 + masters,
        masters_cpu=masters,
        masters=stopped,
        sshd_cpu=sshd_cpu(lab.hosts) - sshd0,
        busy_cpu=machine_busy_seconds() - busy0,
        busy_seconds=time.monotonic() - window,
        hosts_ok=int(counts.get("ok", 0)) + int(counts.get("changed", 0)),
        markers=markers(lab.hosts, marker),
        waves=int(after.get(f"{_WAVES}_count", 0) - before.get(f"{_WAVES}_count", 0)),
        waves_seconds=after.get(f"{_WAVES}_sum", 0) - before.get(f"{_WAVES}_sum", 0),
        start_seconds=begun - asked,
        start_cpu=cpu0 - cpu_start,
        rollout_id=rollout_id,
        state=state,
        error=error,
    )


def _wait_ended(controller: Controller, rollout_id: int) -> None:
    """Until the controller's log says the rollout ended ("rollout N done: ..."). Reading
    its log costs the controller nothing; reading /metrics every 0.2 s cost it 5-8 ms a
    scrape, which its CPU figure would count. (The end of its wave worker no longer
    tells: a slice runner keeps its worker for the next slice.)"""
    finals = "|".join(state.value for state in RolloutState if state.final)
    ended = re.compile(rf"rollout {rollout_id} ({finals}): ")
    deadline = time.monotonic() + _RUN_TIMEOUT
    while time.monotonic() < deadline:
        if ended.search(controller.log_text()):
            return
        time.sleep(0.05)
    raise RunFailed(f"rollout {rollout_id} did not end in {_RUN_TIMEOUT:g}s")


def _controller_cpu(pid: int) -> float:
    """The controller's whole process tree, its wave workers kept alive between slices
    (and their zygotes, Ansible, Mitogen's multiplexers) included."""
    return subtree_cpu(pid, read_stats())


def engine_control_dirs(ansible_dir: Path, rollout_id: int) -> set[Path]:
    """Where the engine's ssh keeps its masters, as ansible-runner recorded each slice's
    environment (artifacts/run/command) in the controller's ``rollout_work_dir``."""
    found = set()
    for command in (ansible_dir / str(rollout_id)).glob("wave-*/artifacts/*/command"):
        env = json.loads(command.read_text()).get("env", {})
        if where := env.get("ANSIBLE_SSH_CONTROL_PATH_DIR"):
            found.add(Path(where))
    return found


def stop_masters(control_dir: Path) -> tuple[float, int]:
    """Stops the ssh masters whose sockets are in ``control_dir``; returns the CPU they
    used (they are no one's child by then: nothing else accounts for it) and how many."""
    if not control_dir.is_dir():
        return 0.0, 0
    cpu, masters = 0.0, []
    for sock in sorted(control_dir.iterdir()):
        if not sock.is_socket():
            continue
        base = ["ssh", "-F", "/dev/null", "-o", f"ControlPath={str(sock).replace('%', '%%')}"]
        check = _ssh(base, "check")
        if found := re.search(r"pid=(\d+)", check):
            with contextlib.suppress(psutil.NoSuchProcess):
                master = psutil.Process(int(found.group(1)))
                times = master.cpu_times()
                cpu += times.user + times.system
                masters.append(master)
        _ssh(base, "exit")
    _, alive = psutil.wait_procs(masters, timeout=10)
    if alive:
        raise RunFailed(f"ssh masters still running: {[p.pid for p in alive]}")
    return cpu, len(masters)


def _ssh(base: list[str], command: str) -> str:
    done = subprocess.run(
        [*base, "-O", command, "master"], capture_output=True, text=True, timeout=10, check=False
    )
    return done.stderr + done.stdout


def sshd_cpu(hosts: list[SshHost]) -> float:
    """CPU of every host's sshd and of the processes under it that it has waited for."""
    total = 0.0
    for host in hosts:
        total += _tree_cpu(psutil.Process(host.pid))
    return total


def _tree_cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _settle(lab: Lab, control_dirs: set[Path]) -> tuple[float, int]:
    """Stops a run's ssh masters and waits until every session has ended (its CPU is then
    in its sshd's children's times); returns the masters' CPU and how many there were."""
    cpu, count = 0.0, 0
    for control_dir in control_dirs:
        more, found = stop_masters(control_dir)
        cpu, count = cpu + more, count + found
    wait_until(lambda: not any(h.session_pids() for h in lab.hosts), 30, "ssh sessions to end")
    return cpu, count


def markers(hosts: list[SshHost], marker: str) -> int:
    return sum(1 for h in hosts if h.read_file("/etc/schoolfleet/marker") == f"{marker}\n")


def _kill_tree(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=5)


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
