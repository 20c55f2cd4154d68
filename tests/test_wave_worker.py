"""A rollout's warm wave worker, as Ansible's OS user on namespace sshd hosts: several
waves in one worker, a wave cancelled mid-task with the worker kept, a worker killed
mid-wave (its hosts fail, saying why, and the next wave gets a fresh worker), and a
worker that ends by itself when left idle."""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest

from controller.rollouts.runner import RunnerSettings, WaveJob, WaveRun
from controller.rollouts.worker import RolloutWorker, stop_masters_as
from inventory.rollouts import HostOutcome
from tests.ansible_user import (
    ANSIBLE_USER,
    ansible_work_dir,
    ensure_ansible_user,
    readable_playbooks,
)
from tests.netns import needs_root
from tests.ssh_hosts import SshHost, is_alive, ssh_hosts

pytestmark = [pytest.mark.e2e, needs_root]

MARKER = """\
- name: Mark
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the marker
      ansible.builtin.copy:
        dest: /etc/schoolfleet/marker
        content: "{{ sf_release }}-{{ inventory_hostname }}\\n"
        mode: "0644"
"""
SLEEP = """\
- name: Take long
  hosts: all
  gather_facts: false
  tasks:
    - name: Sleep
      ansible.builtin.command: sleep 30
"""


@dataclass
class Lab:
    """Hosts, the playbooks Ansible's user can read, and where waves and logs go."""

    hosts: list[SshHost]
    books: Path
    waves: Path
    logs: Path
    settings: RunnerSettings

    def job(self, n: int, playbook: str, release: str = "r1") -> WaveJob:
        return WaveJob(
            playbook=self.books / playbook,
            inventory={"all": {"hosts": {h.name: {"ansible_host": h.address} for h in self.hosts}}},
            hosts=[h.name for h in self.hosts],
            work_dir=self.waves / f"wave-{n}",
            settings=self.settings,
            extra_vars={"sf_release": release},
            wave=n,
        )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    ensure_ansible_user()
    source = tmp_path / "books"
    source.mkdir()
    (source / "marker.yml").write_text(MARKER)
    (source / "sleep.yml").write_text(SLEEP)
    control_dir = Path("/tmp") / f"sf-ssh-{secrets.token_hex(6)}"  # noqa: S108
    with readable_playbooks(source) as books, ansible_work_dir() as waves, ssh_hosts(2) as hosts:
        settings = RunnerSettings(
            forks=2,
            remote_user=hosts[0].user,
            private_key_file=hosts[0].key_file,
            known_hosts=hosts[0].known_hosts,
            control_path_dir=control_dir,
            ssh_timeout=5,
            timeout=120,
            os_user=ANSIBLE_USER,
        )
        try:
            yield Lab(hosts, books, waves, tmp_path / "logs", settings)
        finally:
            stop_masters_as(ANSIBLE_USER, control_dir)


@contextmanager
def _worker(idle: float = 300.0) -> Iterator[RolloutWorker]:
    worker = RolloutWorker(ANSIBLE_USER, idle=idle)
    try:
        yield worker
    finally:
        worker.close(grace=10)


def _in_thread(
    worker: RolloutWorker, job: WaveJob, cancel: threading.Event, log: Path
) -> tuple[threading.Thread, list[WaveRun]]:
    runs: list[WaveRun] = []
    thread = threading.Thread(target=lambda: runs.append(worker.run(job, cancel, log)))
    thread.start()
    return thread, runs


def _wait_sleeping(hosts: list[SshHost]) -> None:
    def sleeping(host: SshHost) -> bool:
        names = []
        for pid in host.session_pids():
            try:
                names.append(psutil.Process(pid).name())
            except psutil.NoSuchProcess:
                continue
        return "sleep" in names

    deadline = time.monotonic() + 40
    while not all(sleeping(h) for h in hosts):
        assert time.monotonic() < deadline, "the sleep never started"
        time.sleep(0.1)


def _stdout(lab: Lab, n: int) -> str:
    return (lab.waves / f"wave-{n}" / "artifacts" / "run" / "stdout").read_text()


def _ansible_of(pid: int) -> list[psutil.Process]:
    """What runs under the worker but its zygote (a fork of the worker, kept)."""
    worker = psutil.Process(pid)
    return [p for p in worker.children(recursive=True) if p.cmdline() != worker.cmdline()]


def test_one_worker_runs_a_rollouts_waves_one_after_another(lab: Lab) -> None:
    with _worker() as worker:
        first = worker.run(lab.job(1, "marker.yml", "r1"), threading.Event(), lab.logs / "w1.log")
        pid = worker.pid
        assert pid is not None
        assert psutil.Process(pid).username() == ANSIBLE_USER
        second = worker.run(lab.job(2, "marker.yml", "r2"), threading.Event(), lab.logs / "w2.log")
        assert worker.pid == pid, "the second wave started another worker"
        for n, run in ((1, first), (2, second)):
            assert {r.outcome for r in run.results.values()} == {HostOutcome.CHANGED}, run
            assert {r.wave for r in run.results.values()} == {n}
        for host in lab.hosts:
            assert host.read_file("/etc/schoolfleet/marker") == f"r2-{host.name}\n"
        # Both forked from the worker's zygote, which had imported Ansible once.
        for n in (1, 2):
            assert (lab.waves / f"wave-{n}" / "ansible.pid").exists()
            assert "started afresh" not in _stdout(lab, n)
        # Each wave's log lines went to that wave's log.
        assert "wave=1 " in (lab.logs / "w1.log").read_text()
        assert "wave=2 " in (lab.logs / "w2.log").read_text()
        assert "wave=1 " not in (lab.logs / "w2.log").read_text()
    assert not psutil.pid_exists(pid) or not is_alive(psutil.Process(pid))


def test_a_cancelled_wave_stops_and_the_worker_takes_the_next(lab: Lab) -> None:
    with _worker() as worker:
        cancel = threading.Event()
        thread, runs = _in_thread(worker, lab.job(1, "sleep.yml"), cancel, lab.logs / "w1.log")
        _wait_sleeping(lab.hosts)
        pid = worker.pid
        assert pid is not None
        under = _ansible_of(pid)
        ssh = [" ".join(p.cmdline()) for p in under if p.name() == "ssh"]
        assert ssh, under
        # Mitogen's ssh (the default strategy), without ssh's compression.
        assert all("python" in c and "Compression yes" not in c for c in ssh), ssh
        cancelled_at = time.monotonic()
        cancel.set()
        thread.join(30)
        assert not thread.is_alive()
        assert time.monotonic() - cancelled_at < 5
        (run,) = runs
        assert run.status == "canceled"
        # Stopped mid-task (interrupted, where outcomes tell the two apart).
        stopped = {HostOutcome.CANCELLED, getattr(HostOutcome, "INTERRUPTED", None)}
        assert {r.outcome for r in run.results.values()} <= stopped, run
        # ansible-playbook, its workers and their ssh are gone; the worker is not.
        assert not [p.pid for p in under if is_alive(p)]
        assert worker.pid == pid
        again = worker.run(lab.job(2, "marker.yml"), threading.Event(), lab.logs / "w2.log")
        assert worker.pid == pid
        assert {r.outcome for r in again.results.values()} == {HostOutcome.CHANGED}, (
            again,
            (lab.logs / "w2.log").read_text(),
        )


def test_a_worker_killed_mid_wave_fails_its_hosts_saying_why(lab: Lab) -> None:
    with _worker() as worker:
        log = lab.logs / "w1.log"
        thread, runs = _in_thread(worker, lab.job(1, "sleep.yml"), threading.Event(), log)
        _wait_sleeping(lab.hosts)
        pid = worker.pid
        assert pid is not None
        under = _ansible_of(pid)
        psutil.Process(pid).send_signal(signal.SIGKILL)
        thread.join(30)
        assert not thread.is_alive()
        (run,) = runs
        assert {r.outcome for r in run.results.values()} == {HostOutcome.FAILED}
        messages = {r.message for r in run.results.values()}
        assert messages == {f"the wave's worker ended (exit -9) before it answered; see {log}"}
        # Its ansible goes with it (the pty's hang-up), within a few seconds.
        deadline = time.monotonic() + 15
        while [p for p in under if is_alive(p)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [(p.pid, p.name()) for p in under if is_alive(p)]
        # The next wave gets a fresh worker.
        again = worker.run(lab.job(2, "marker.yml"), threading.Event(), lab.logs / "w2.log")
        assert worker.pid not in (None, pid)
        assert {r.outcome for r in again.results.values()} == {HostOutcome.CHANGED}


def test_an_idle_worker_ends_and_the_next_wave_starts_another(lab: Lab) -> None:
    with _worker(idle=2.0) as worker:
        worker.run(lab.job(1, "marker.yml"), threading.Event(), lab.logs / "w1.log")
        pid = worker.pid
        assert pid is not None
        proc = psutil.Process(pid)
        proc.wait(10)  # ends by itself (the controller side reaps it on its next use)
        assert "no job for 2 s: the worker ends" in (lab.logs / "w1.log").read_text()
        again = worker.run(lab.job(2, "marker.yml", "r2"), threading.Event(), lab.logs / "w2.log")
        assert worker.pid not in (None, pid)
        assert {r.outcome for r in again.results.values()} == {HostOutcome.CHANGED}


def test_a_wave_ansible_must_see_otherwise_starts_ansible_afresh(lab: Lab) -> None:
    with _worker() as worker:
        worker.run(lab.job(1, "marker.yml", "r1"), threading.Event(), lab.logs / "w1.log")
        # Other settings: Ansible reads them at import, so the zygote's fork would not do.
        other = replace(lab.job(2, "marker.yml", "r2"), settings=replace(lab.settings, forks=3))
        run = worker.run(other, threading.Event(), lab.logs / "w2.log")
        assert {r.outcome for r in run.results.values()} == {HostOutcome.CHANGED}
        assert not (lab.waves / "wave-2" / "ansible.pid").exists()
        assert (
            "ansible-playbook started afresh: its environment differs in ANSIBLE_FORKS"
            in _stdout(lab, 2)
        )
        for host in lab.hosts:
            assert host.read_file("/etc/schoolfleet/marker") == f"r2-{host.name}\n"
