"""Rollouts across controller replicas end to end: two real controllers on one
PostgreSQL database, real agents in network namespaces, each namespace a real SSH
host. The controller holding the rollouts lease drives; every wave is cut into
slices of one host here, and each controller runs the slices it claims with real
Ansible. schoolctl asks the other one: an abort there stops ansible-playbook at once
wherever it runs; a wave of two hosts runs on both controllers at once; and `kill -9`
of the holder in that wave leaves the rollout to the other, which runs the dead
controller's slice again and finishes the rollout."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from controller.stores import open_stores
from inventory.rollouts import RolloutRecord
from tests.ansible_user import ansible_work_dir, ensure_ansible_user, readable_playbooks
from tests.netns import needs_root
from tests.procs import BIN, Agent, Controller, Result, free_port, wait_until
from tests.ssh_hosts import SshHost, ssh_hosts

pytestmark = [pytest.mark.e2e, needs_root]

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
PRIVATE = ("/etc/schoolfleet",)
MARK = """\
- name: Mark the hosts
  hosts: all
  gather_facts: false
  tasks:
    - name: The marker names the run
      ansible.builtin.copy:
        dest: /etc/schoolfleet/marker
        content: "{{ marker | default('unset') }}\\n"
        mode: "0644"
    - name: Take a while when asked
      ansible.builtin.command: sleep {{ pause | default(0) }}
      when: (pause | default(0) | int) > 0
      changed_when: false
"""
MARK_VARS = """\
marker: {type: str, pattern: "[a-z0-9-]{1,40}", school_it: true}
pause: {type: int, min: 0, max: 120}
"""
KIOSK = [sys.executable, "-c", "import time; time.sleep(600)", "{url}"]
LEASE_SECONDS = 3.0


def _env(playbooks: Path, ansible_dir: Path, host: SshHost) -> dict[str, str]:
    return {
        "SCHOOLFLEET_CONTROLLER_PLAYBOOKS_DIR": str(playbooks),
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_WORK_DIR": str(ansible_dir),
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_SSH_KEY": str(host.key_file),
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_KNOWN_HOSTS": str(host.known_hosts),
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_RECHECK": "1",
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_BATCH_ESTIMATE": "60",
        "SCHOOLFLEET_CONTROLLER_LEASE_SECONDS": str(LEASE_SECONDS),
        # A slice a host and one at a time: a wave of two runs on both controllers.
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_SLICE_HOSTS": "1",
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_SLOTS": "1",
    }


def _ctl(controller: Controller, *args: str, timeout: float = 60) -> Result:
    """schoolctl as central ops of ``controller``, waiting up to 30 s for an answer
    (tests.procs.schoolctl waits 5): a start runs ansible-playbook's syntax check,
    which takes longer than that on a machine busy with other tests."""
    done = subprocess.run(
        [str(BIN / "schoolctl"), "--controller", controller.address, "--timeout", "30", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={
            **os.environ,
            "SCHOOLCTL_CONFIG": os.devnull,
            "SCHOOLCTL_TOKEN": controller.admin_token,
        },
    )
    return Result(done.returncode, done.stdout, done.stderr)


def _holder(replicas: list[Controller]) -> Controller | None:
    held = [r for r in replicas if r.metrics().get('schoolfleet_lease_held{lease="rollouts"}')]
    assert len(held) <= 1, f"rollouts held by {len(held)} controllers"
    return held[0] if held else None


def _ansible_pids(controller: Controller) -> list[int]:
    proc = controller.proc
    assert proc is not None
    pids = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ansible-playbook" in " ".join(p.cmdline()):
                pids.append(p.pid)
    return pids


@contextlib.contextmanager
def _two_replicas(tmp: Path, pg_url: str) -> Iterator[tuple[list[Controller], list[SshHost]]]:
    source = tmp / "playbooks"
    shutil.copytree(PLAYBOOKS, source)
    (source / "mark.yml").write_text(MARK)
    (source / "mark.vars.yml").write_text(MARK_VARS)
    ensure_ansible_user()
    with (
        readable_playbooks(source) as playbooks,
        ansible_work_dir() as first_dir,
        ansible_work_dir() as second_dir,
        ssh_hosts(4, private_dirs=PRIVATE) as hosts,
    ):
        replicas: list[Controller] = []
        agents: list[Agent] = []
        try:
            for n, ansible_dir in enumerate((first_dir, second_dir), 1):
                token = replicas[0].admin_token if replicas else ""
                c = Controller(
                    tmp / f"c{n}",
                    port=free_port(),
                    host=hosts[0].gateway,
                    env=_env(playbooks, ansible_dir, hosts[0]),
                    database_url=pg_url,
                    admin_token=token,
                )
                c.workdir.mkdir()
                replicas.append(c.start())
            for i, host in enumerate(hosts):
                # Half the agents on each replica: streams need not be on the driver.
                controller = replicas[i % 2]
                agents.append(
                    Agent(
                        tmp,
                        host.name,
                        "panel",
                        "s1",
                        f"r{i}",
                        f"{host.gateway}:{controller.grpc_port}",
                        extra={"heartbeat_interval": 2, "kiosk_argv": KIOSK},
                        netns=host.namespace,
                    ).start()
                )

            def registered() -> bool:
                done = _ctl(replicas[0], "devices", "list", "--json")
                return sum(1 for d in done.json() if d.get("address")) == len(hosts)

            wait_until(registered, 60, "every agent registered with its address")
            yield replicas, hosts
        finally:
            for agent in agents:
                agent.stop()
            for c in replicas:
                c.stop()


def test_a_rollout_s_waves_run_on_both_replicas_and_survive_the_holder_s_death(
    tmp_path: Path, pg_url: str
) -> None:
    stores = open_stores(pg_url)

    def stored(rollout_id: int) -> RolloutRecord:
        record = stores.rollouts.get_rollout(rollout_id)
        assert record is not None
        return record

    def start(controller: Controller, *args: str) -> int:
        done = _ctl(controller, "rollout", "start", "mark.yml", *args, "--json")
        assert done.code == 0, done
        return int(done.json()["rollout_id"])

    try:
        with _two_replicas(tmp_path, pg_url) as (replicas, hosts):
            holder = wait_until(lambda: _holder(replicas), 15, "a controller driving rollouts")
            other = next(r for r in replicas if r is not holder)

            # An abort asked of the other stops the holder's ansible-playbook at once.
            slow = start(
                other,
                "--select",
                "device=host-0",
                "--extra-vars",
                '{"marker": "slow", "pause": 60}',
            )
            wait_until(
                lambda: hosts[0].read_file("/etc/schoolfleet/marker"), 30, "the playbook begun"
            )
            # Run by whichever claimed its slice.
            assert len(_ansible_pids(holder)) + len(_ansible_pids(other)) > 0
            asked = time.monotonic()
            aborted = _ctl(other, "rollout", "abort", str(slow), "--yes", "--json", timeout=60)
            took = time.monotonic() - asked
            assert aborted.code == 0, aborted
            info: dict[str, Any] = aborted.json()
            assert (info["state"], info["reason"]) == ("aborted", "aborted by ops")
            assert {h["device_id"]: h["outcome"] for h in info["hosts"]} == {
                "host-0": "interrupted"
            }
            assert took < 15, took
            wait_until(
                lambda: not (_ansible_pids(holder) or _ansible_pids(other)) or None,
                10,
                "ansible-playbook gone",
            )

            # Waves of 1 (the canary), 2 and 1: the second's two slices run at once,
            # one on each controller (each has one slot); kill -9 of the holder then.
            rollout_id = start(
                other,
                "--select",
                "device=host-0|host-1|host-2|host-3",
                "--wave-size",
                "2",
                "--extra-vars",
                '{"marker": "across", "pause": 6}',
            )
            started = re.compile(rf"rollout {rollout_id} wave 2 slice \d started hosts=1 ")
            wait_until(
                lambda: all(started.search(r.log_text()) for r in replicas) or None,
                90,
                "wave 2's slices running on both controllers",
            )
            assert [len(started.findall(r.log_text())) for r in replicas] == [1, 1]
            wait_until(
                lambda: (_ansible_pids(holder) and _ansible_pids(other)) or None,
                10,
                "ansible-playbook running under both controllers",
                step=0.1,
            )
            assert holder.proc is not None
            holder.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            holder.stop()
            wait_until(lambda: _holder([other]), 15, "the other driving rollouts", step=0.1)
            taken = time.monotonic() - killed
            wait_until(lambda: stored(rollout_id).state.final or None, 90, "the rollout ended")
            record = stored(rollout_id)
            # The dead controller's host changed, or (had its playbook passed the
            # copy before the SIGKILL) found already right when run again: ok.
            assert (record.state.value, record.reason) in {
                ("done", "every host done in 3 wave(s): 4 changed"),
                ("done", "every host done in 3 wave(s): 1 ok, 3 changed"),
            }
            assert [(w.wave, w.hosts, w.failed) for w in record.waves] == [
                (1, 1, 0),
                (2, 2, 0),
                (3, 1, 0),
            ]
            for host in hosts:
                assert host.read_file("/etc/schoolfleet/marker") == "across\n"
            log = other.log_text()
            # The dead controller's slice, claimed again once its claim expired.
            assert (
                log.count(
                    "its previous claim ended before the slice did (a controller stopped or "
                    "died); the playbook runs on its 1 hosts again here"
                )
                == 1
            )
            assert f"rollout {rollout_id} resumed from the store" in log
            # The lease's length and a fifth, and a renewal's period to see it.
            assert taken <= LEASE_SECONDS * 1.2 + LEASE_SECONDS / 5 + 1.0, taken
            print(
                f"abort through the other replica answered in {took:.1f} s; rollouts taken "
                f"over {taken:.1f} s after kill -9 (lease {LEASE_SECONDS} s)"
            )
    finally:
        stores.close()
