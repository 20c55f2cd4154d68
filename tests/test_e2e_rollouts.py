"""Rollouts end to end: a real controller, real agents in network namespaces, each
namespace a real SSH host, and schoolctl as a user runs it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.ansible_user import ansible_work_dir, ensure_ansible_user, readable_playbooks
from tests.netns import needs_root
from tests.procs import Agent, Controller, Result, free_port, schoolctl, wait_until
from tests.ssh_hosts import SshHost, ssh_hosts

pytestmark = [pytest.mark.e2e, needs_root]

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
PRIVATE = (
    "/etc/schoolfleet",
    "/opt/schoolfleet",
    "/var/lib/schoolfleet",
    "/etc/systemd/system",
    "/etc/systemd/timesyncd.conf.d",
)
# Writes a marker; fails on a host labelled fail=yes (exit 3, a line on stdout and one on
# stderr); sleeps when asked.
MARK = """\
- name: Mark the hosts
  hosts: all
  gather_facts: false
  tasks:
    - name: The config folder exists
      ansible.builtin.file:
        path: /etc/schoolfleet
        state: directory
        mode: "0755"
    - name: A host labelled to fail fails here
      ansible.builtin.shell: "echo checking; echo this host is labelled to fail >&2; exit 3"
      when: (sf_labels | default({})).get('fail', '') == 'yes'
      changed_when: false
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
# Notes what ran its task on the host: with Mitogen, a Python that names itself
# "python3(mitogen:...)", kept for the host's tasks.
RUNNER = """\
- name: Note the task's runner
  hosts: all
  gather_facts: false
  tasks:
    - name: Note the process that ran this
      ansible.builtin.shell: "tr '\\\\0' ' ' < /proc/$PPID/cmdline > /etc/schoolfleet-runner"
"""
# mark.yml's variables: what a rollout of it may set.
MARK_VARS = """\
marker: {type: str, pattern: "[a-z0-9-]{1,40}", school_it: true}
pause: {type: int, min: 0, max: 120}
"""


# A lesson launched in a test host's room shows nothing: a quiet stand-in for Chromium.
KIOSK = [sys.executable, "-c", "import time; time.sleep(600)", "{url}"]


@dataclass
class Lab:
    controller: Controller
    hosts: list[SshHost]
    agents: list[Agent]

    def ctl(self, *args: str, timeout: float = 30) -> Result:
        return schoolctl(self.controller.address, *args, timeout=timeout)

    def status(self, rollout_id: int) -> dict[str, Any]:
        done = self.ctl("rollout", "status", str(rollout_id), "--json")
        assert done.code in (0, 1, 7), done
        info: dict[str, Any] = done.json()
        return info

    def start(self, *args: str) -> int:
        done = self.ctl("rollout", "start", *args, "--json")
        assert done.code == 0, done
        return int(done.json()["rollout_id"])

    def wait_state(self, rollout_id: int, states: set[str], timeout: float) -> dict[str, Any]:
        """What schoolctl shows once the rollout's stored state is one of ``states``
        (read from the store while waiting: a schoolctl per poll would take a core
        from the rollout; "done-unreached" is stored as "done")."""
        stored = {state.partition("-")[0] for state in states}
        wait_until(
            lambda: self._stored_state(rollout_id) in stored or None,
            timeout,
            f"rollout {rollout_id} in {states}",
        )
        info = self.status(rollout_id)
        assert info["state"] in states, info
        return info

    def _stored_state(self, rollout_id: int) -> str:
        with contextlib.closing(
            sqlite3.connect(f"file:{self.controller.database}?mode=ro", uri=True)
        ) as db:
            row = db.execute(
                "SELECT state FROM rollouts WHERE rollout_id = ?", (rollout_id,)
            ).fetchone()
        return str(row[0]) if row else ""

    def outcomes(self, info: dict[str, Any]) -> dict[str, str]:
        return {h["device_id"]: h["outcome"] for h in info["hosts"]}

    def ansible_pids(self) -> list[int]:
        proc = self.controller.proc
        assert proc is not None
        pids = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            # A process that has just ended (a zombie) has no command line any more.
            with contextlib.suppress(psutil.Error):
                if "ansible-playbook" in " ".join(p.cmdline()):
                    pids.append(p.pid)
        return pids


def _agents(lab_dir: Path, controller: Controller, hosts: list[SshHost]) -> list[Agent]:
    agents = []
    for i, host in enumerate(hosts):
        school = "s2" if i == len(hosts) - 1 else "s1"
        labels = ["fail=yes"] if host.name == "host-3" else []
        agents.append(
            Agent(
                lab_dir,
                host.name,
                "panel",
                school,
                f"r{i}",
                f"{host.gateway}:{controller.grpc_port}",
                extra={"labels": labels, "heartbeat_interval": 2, "kiosk_argv": KIOSK},
                netns=host.namespace,
            ).start()
        )
    return agents


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("rollouts")
    source = work / "playbooks"
    shutil.copytree(PLAYBOOKS, source)
    (source / "mark.yml").write_text(MARK)
    (source / "mark.vars.yml").write_text(MARK_VARS)
    (source / "runner.yml").write_text(RUNNER)
    (source / "broken.yml").write_text("- name: broken\n  hosts: all\n  tasks: [\n")
    ensure_ansible_user()
    with (
        readable_playbooks(source) as playbooks,
        ansible_work_dir() as ansible_dir,
        ssh_hosts(6, private_dirs=PRIVATE) as hosts,
    ):
        controller = Controller(
            work,
            # A fixed port: the agents find the controller again after its restart.
            port=free_port(),
            host=hosts[0].gateway,
            env={
                "SCHOOLFLEET_CONTROLLER_DATA_DIR": str(work / "data"),
                "SCHOOLFLEET_CONTROLLER_PLAYBOOKS_DIR": str(playbooks),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_WORK_DIR": str(ansible_dir),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_SSH_KEY": str(hosts[0].key_file),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_KNOWN_HOSTS": str(hosts[0].known_hosts),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_RECHECK": "1",
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_BATCH_ESTIMATE": "60",
                "SCHOOLFLEET_CONTROLLER_CONTENT_HOSTS": '["lessons.test"]',
                # The lesson gate judges a launch this long after the lesson's start.
                "SCHOOLFLEET_CONTROLLER_LESSON_ON_TIME": "1",
            },
        ).start()
        agents = _agents(work, controller, hosts)
        lab = Lab(controller, hosts, agents)
        try:

            def registered() -> list[dict[str, Any]] | None:
                devices = lab.ctl("devices", "list", "--json").json()
                ready = [d for d in devices if d.get("address")]
                return devices if len(ready) == len(hosts) else None

            devices = wait_until(registered, 60, "every agent registered with its address")
            assert {d["device_id"]: d["address"] for d in devices} == {
                h.name: h.address for h in hosts
            }
            yield lab
        finally:
            for agent in agents:
                agent.stop()
            controller.stop()


def test_waves_halt_at_the_wave_that_fails_and_every_outcome_is_recorded(lab: Lab) -> None:
    lab.hosts[4].stop()  # sshd gone: host-4 is unreachable
    rollout_id = lab.start(
        "mark.yml",
        "--select",
        "school=s1",
        "--canary",
        "1",
        "--wave-size",
        "2",
        # A budget of 1 of the 5 hosts: the canary's wave and the next pass, the third
        # (host-3 fails, host-4 is unreachable) halts.
        "--max-fail",
        "20%",
        "--extra-vars",
        "marker: first",
    )
    watched = lab.ctl(
        "rollout", "status", str(rollout_id), "--watch", "--interval", "1", timeout=180
    )
    assert watched.code == 1, watched  # halted
    info = lab.status(rollout_id)
    assert info["state"] == "halted"
    assert info["reason"] == (
        "wave 3: 2 of 5 hosts failed or unreachable, over the --max-fail budget of 1 (20%)"
    )
    assert info["fail_budget"] == {
        "max_fail": 20.0,
        "allowed": 1,
        "used": 2,
        "left": 0,
        "passed": True,
    }
    assert [(w["wave"], w["hosts"], w["failed"]) for w in info["waves"]] == [
        (1, 1, 0),
        (2, 2, 0),
        (3, 2, 2),
    ]
    hosts = {h["device_id"]: h for h in info["hosts"]}
    assert lab.outcomes(info) == {
        "host-0": "changed",
        "host-1": "changed",
        "host-2": "changed",
        "host-3": "failed",
        "host-4": "unreachable",
    }
    assert hosts["host-3"]["task"] == "A host labelled to fail fails here"
    assert hosts["host-3"]["message"] == "non-zero return code: this host is labelled to fail"
    assert (hosts["host-3"]["rc"], hosts["host-3"]["stderr_tail"]) == (
        3,
        "this host is labelled to fail",
    )
    assert hosts["host-3"]["stdout_tail"] == "checking"
    assert hosts["host-4"]["message"]
    for host in lab.hosts[:3]:
        assert host.read_file("/etc/schoolfleet/marker") == "first\n"
    assert lab.hosts[3].read_file("/etc/schoolfleet/marker") is None
    # The people view says the same, and names the failing task.
    shown = lab.ctl("rollout", "status", str(rollout_id))
    assert shown.code == 1 and "halted" in shown.out and "labelled to fail" in shown.out
    flat = " ".join(shown.out.split())
    assert "budget passed: 2 failed or unreachable, 1 allowed" in flat
    assert "host-3 rc 3 stderr (last lines): this host is labelled to fail" in flat
    # One host's whole stored result, without digging in the data folder.
    one = lab.ctl("rollout", "status", str(rollout_id), "--host", "host-3")
    assert one.code == 1, one  # the rollout's own exit code
    flat = " ".join(one.out.split())
    assert "host host-3 (school s1)" in flat and "rc 3" in flat
    assert "A host labelled to fail fails here failed" in flat
    assert "stderr (last lines): this host is labelled to fail" in flat
    assert "stdout (last lines): checking" in flat
    assert '"rc": 3' in one.out and "invocation" not in one.out
    detail = lab.ctl("rollout", "status", str(rollout_id), "--host", "host-3", "--json").json()
    assert detail["host"]["rc"] == 3
    tasks = detail["host"]["detail"]["tasks"]
    assert [t["task"] for t in tasks] == [
        "The config folder exists",
        "A host labelled to fail fails here",
    ]
    assert tasks[-1]["status"] == "failed"
    unknown = lab.ctl("rollout", "status", str(rollout_id), "--host", "host-9")
    assert unknown.code == 4, unknown
    assert unknown.err.splitlines()[-1] == f"schoolctl: no host 'host-9' in rollout {rollout_id}"
    metrics = lab.controller.metrics()
    assert metrics['schoolfleet_rollouts_finished_total{state="halted"}'] >= 1
    assert metrics['schoolfleet_rollout_host_results_total{outcome="failed"}'] >= 1
    # retry --failed: a new rollout of the failed and unreachable hosts only.
    retried = lab.ctl("rollout", "retry", str(rollout_id), "--failed", "--json")
    assert retried.code == 0, retried
    again = lab.wait_state(int(retried.json()["rollout_id"]), {"halted", "done"}, 120)
    assert set(lab.outcomes(again)) == {"host-3", "host-4"}


def test_hosts_not_reached_end_the_rollout_apart_and_retry_takes_them(lab: Lab) -> None:
    # host-4's sshd is down since the first test: unreachable, within a budget of 1 of 2.
    rollout_id = lab.start("mark.yml", "--select", "device=host-0|host-4", "--max-fail", "50%")
    watched = lab.ctl(
        "rollout", "status", str(rollout_id), "--watch", "--interval", "1", timeout=120
    )
    assert watched.code == 7, watched  # done, but not every host has the change
    info = lab.status(rollout_id)
    assert info["state"] == "done-unreached"
    assert info["reason"].startswith("done, 1 host(s) not reached (1 unreachable)")
    assert (info["fail_budget"]["left"], info["fail_budget"]["passed"]) == (0, False)
    assert "done-unreached" in lab.ctl("rollout", "status", str(rollout_id)).out
    # A failure spends the whole budget of 0: the host after it is never reached.
    halted = lab.start("mark.yml", "--select", "device=host-3|host-5", "--max-fail", "0%")
    info = lab.wait_state(halted, {"halted", "done", "done-unreached"}, 120)
    assert info["state"] == "halted", info
    assert lab.outcomes(info) == {"host-3": "failed", "host-5": "cancelled"}
    not_reached = lab.ctl("rollout", "retry", str(halted), "--not-reached", "--json")
    assert not_reached.code == 0, not_reached
    assert not_reached.json()["selector"] == f"not-reached hosts of rollout {halted}"
    again = lab.wait_state(int(not_reached.json()["rollout_id"]), {"done", "halted"}, 120)
    assert set(lab.outcomes(again)) == {"host-5"}
    assert set(lab.outcomes(again).values()) <= {"changed", "ok"}
    both = lab.ctl("rollout", "retry", str(halted), "--failed", "--not-reached", "--json")
    assert both.code == 0, both
    assert {h["device_id"] for h in both.json()["hosts"]} == {"host-3", "host-5"}
    lab.wait_state(int(both.json()["rollout_id"]), {"halted", "done"}, 120)


def test_each_rollout_runs_with_its_strategy(lab: Lab) -> None:
    """Mitogen by default (the controller's rollout_strategy), Ansible's linear when a
    rollout asks for it; a retry keeps the rollout's strategy."""
    host = lab.hosts[0]
    for asked, expected in (((), "mitogen"), (("--strategy", "linear"), "linear")):
        rollout_id = lab.start("runner.yml", "--select", "device=host-0", *asked)
        info = lab.wait_state(rollout_id, {"done", "halted"}, 90)
        assert (info["state"], info["strategy"]) == ("done", expected), info
        assert f"Ansible strategy {expected}" in lab.ctl("rollout", "status", str(rollout_id)).out
        runner = host.read_file("/etc/schoolfleet-runner") or ""
        assert ("(mitogen:" in runner) == (expected == "mitogen"), runner
    # host-3 fails mark.yml (its label): the retry of its failure keeps "linear".
    failed = lab.start("mark.yml", "--select", "device=host-3", "--strategy", "linear")
    assert lab.wait_state(failed, {"done", "halted"}, 90)["strategy"] == "linear"
    retried = lab.ctl("rollout", "retry", str(failed), "--failed", "--json")
    assert retried.code == 0, retried
    assert retried.json()["strategy"] == "linear"
    lab.wait_state(int(retried.json()["rollout_id"]), {"done", "halted"}, 90)


def test_bad_requests_are_refused_before_anything_runs(lab: Lab) -> None:
    before = lab.ctl("rollout", "list", "--json").json()
    cases = [
        (("nothing.yml", "--select", "school=s1"), "nothing.yml"),
        (("broken.yml", "--select", "school=s1"), "broken.yml"),
        (("mark.yml", "--select", "school=nowhere"), "matches no devices"),
        (("mark.yml", "--select", "colour=red"), "selector key 'colour'"),
        (("mark.yml", "--select", "school=s1", "--extra-vars", "{bad"), "--extra-vars"),
        (("mark.yml", "--select", "school=s1", "--extra-vars", "[1, 2]"), "mapping"),
        (
            ("mark.yml", "--select", "school=s1", "--extra-vars", "ansible_host: 198.18.0.9"),
            "extra var 'ansible_host': Ansible's own",
        ),
        (("mark.yml", "--select", "school=s1", "--extra-vars", "pause: 999"), "'pause'"),
        (("mark.yml", "--select", "school=s1", "--max-fail", "120%"), "max"),
        (("mark.yml", "--select", "school=s1", "--strategy", "free"), "--strategy 'free'"),
    ]
    for args, needle in cases:
        done = lab.ctl("rollout", "start", *args)
        assert done.code != 0, (args, done)
        assert needle in done.err, (args, done.err)
        # Beside the warning that the lab's plaintext port carries the token.
        lines = [x for x in done.err.splitlines() if not x.startswith("schoolctl: warning:")]
        assert len(lines) == 1, done.err
        assert "Traceback" not in done.err
    assert lab.ctl("rollout", "list", "--json").json() == before


def test_one_rollout_per_host_and_abort_stops_ansible(lab: Lab) -> None:
    slow = lab.start(
        "mark.yml", "--select", "device=host-0", "--extra-vars", '{"marker": "slow", "pause": 60}'
    )
    wait_until(lab.ansible_pids, 30, "ansible-playbook running")
    second = lab.ctl("rollout", "start", "mark.yml", "--select", "school=s1")
    assert second.code != 0
    assert f"host-0 already in rollout {slow}" in second.err
    aborted = lab.ctl("rollout", "abort", str(slow), "--yes", "--json", timeout=60)
    assert aborted.code == 0, aborted
    assert aborted.json()["state"] == "aborted"
    # Stopped in the middle of its playbook: it may be half changed.
    assert lab.outcomes(lab.status(slow)) == {"host-0": "interrupted"}
    wait_until(lambda: not lab.ansible_pids() or None, 10, "ansible-playbook gone")
    # The claim is given back: host-0 may be in a new rollout.
    lab.wait_state(lab.start("mark.yml", "--select", "device=host-0"), {"done"}, 60)


def test_a_controller_restart_resumes_the_rollout(lab: Lab) -> None:
    rollout_id = lab.start(
        "mark.yml",
        "--select",
        "device=host-0|host-1|host-2",
        "--wave-size",
        "1",
        "--extra-vars",
        '{"marker": "resumed", "pause": 3}',
    )
    wait_until(
        lambda: len(lab.status(rollout_id)["waves"]) >= 2 or None, 60, "the second wave started"
    )
    assert lab.controller.stop(signal.SIGTERM) == 0
    lab.controller.start()
    info = lab.wait_state(rollout_id, {"done", "halted"}, 90)
    assert info["state"] == "done", info
    assert set(lab.outcomes(info).values()) <= {"changed", "ok"}
    for host in lab.hosts[:3]:
        assert host.read_file("/etc/schoolfleet/marker") == "resumed\n"
    assert "resumed from the store" in lab.controller.log_text()


def test_a_real_playbook_is_idempotent_through_the_engine(lab: Lab) -> None:
    extra = json.dumps(
        {"sf_manage_services": False, "sf_manage_packages": False, "sf_ntp_servers": ["198.18.0.1"]}
    )
    args = ("timesync.yml", "--select", "device=host-0|host-1", "--wave-size", "2")
    first = lab.wait_state(lab.start(*args, "--extra-vars", extra), {"done", "halted"}, 90)
    assert set(lab.outcomes(first).values()) == {"changed"}, first
    second = lab.wait_state(lab.start(*args, "--extra-vars", extra), {"done", "halted"}, 90)
    assert set(lab.outcomes(second).values()) == {"ok"}, second


def test_the_school_day_keeps_busy_devices_out_of_waves(lab: Lab) -> None:
    # A lesson now in host-1's room; host-5's school is outside its only window.
    launched = lab.ctl(
        "lessons", "launch", "https://lessons.test/now", "--school", "s1", "--room", "r1"
    )
    assert launched.code == 0, launched
    other_day = (dt.datetime.now(dt.UTC).weekday() + 3) % 7
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[other_day]
    window = lab.ctl("maintenance", "set", "--school", "s2", f"{day} 03:00-04:00")
    assert window.code == 0, window
    rollout_id = lab.start("mark.yml", "--select", "device=host-0|host-1|host-5")

    def waiting() -> dict[str, Any] | None:
        info = lab.status(rollout_id)
        return info if info["counts"].get("pending") == 2 and info["waiting"] else None

    info = wait_until(waiting, 60, "host-1 and host-5 waiting")
    assert lab.outcomes(info)["host-0"] in {"changed", "ok"}
    assert "1 in rooms with lessons" in info["waiting"]
    assert "1 outside their school's maintenance window" in info["waiting"]
    assert info["state"] == "running"
    assert lab.ctl("rollout", "abort", str(rollout_id), "--yes").code == 0
    assert lab.ctl("maintenance", "set", "--school", "s2", "--clear").code == 0


def test_the_lesson_gate_halts_when_changed_panels_fail_lessons(lab: Lab) -> None:
    # host-1's room has a lesson (the test above): the rollout changes host-0 and waits.
    rollout_id = lab.start(
        "mark.yml", "--select", "device=host-0|host-1", "--gate", "lessons", "--max-fail", "50%"
    )
    lab.wait_state(rollout_id, {"running"}, 30)
    wait_until(
        lambda: lab.outcomes(lab.status(rollout_id))["host-0"] in {"ok", "changed"} or None,
        60,
        "host-0 done in the first wave",
    )
    # After the change host-0's kiosk program is gone: its lessons fail to launch.
    lab.agents[0].stop()
    lab.agents[0] = Agent(
        lab.agents[0].workdir,
        "host-0",
        "panel",
        "s1",
        "r0",
        lab.agents[0].controller,
        extra={"heartbeat_interval": 2, "kiosk_argv": ["/nonexistent/kiosk", "{url}"]},
        netns=lab.hosts[0].namespace,
    ).start()
    for n in range(3):
        url = f"https://lessons.test/after-{n}"
        done = lab.ctl("lessons", "launch", url, "--school", "s1", "--room", "r0", "--minutes", "1")
        assert done.code == 0, done
        time.sleep(1.1)  # a lesson by hand is named by its second
    info = lab.wait_state(rollout_id, {"halted", "done", "aborted"}, 60)
    assert info["state"] == "halted", info
    assert "lesson gate: 3 of 3 lesson launches failed" in info["reason"]
    assert lab.outcomes(info)["host-1"] == "cancelled"


def test_school_it_rolls_out_only_in_its_schools(lab: Lab) -> None:
    it = lab.controller.create_user("it-s2", "school-it", "s2")
    viewer = lab.controller.create_user("watcher", "viewer")
    address = lab.controller.address

    def start(token: str, select: str) -> Result:
        return schoolctl(address, "rollout", "start", "mark.yml", "--select", select, token=token)

    other = start(it.token, "school=s1")
    assert other.code == 6, other
    assert "may not rollouts.start in school s1" in other.err
    everywhere = start(it.token, "kind=panel")
    assert everywhere.code == 6, everywhere
    assert "across schools" in everywhere.err
    assert start(viewer.token, "school=s2").code == 6
    # Their own school is theirs; what they may see of the others' is nothing.
    own = schoolctl(
        address,
        "rollout",
        "start",
        "mark.yml",
        "--select",
        "school=s2",
        "--dry-run",
        "--json",
        token=it.token,
    )
    assert own.code == 0, own
    assert [h["device_id"] for h in own.json()["hosts"]] == ["host-5"]
    in_s1 = lab.start("mark.yml", "--select", "device=host-2")
    lab.wait_state(in_s1, {"done", "halted"}, 60)
    listed = schoolctl(address, "rollout", "list", "--json", token=it.token)
    assert listed.code == 0, listed
    assert in_s1 not in [r["rollout_id"] for r in listed.json()]
    assert in_s1 in [r["rollout_id"] for r in lab.ctl("rollout", "list", "--json").json()]
    hidden = schoolctl(address, "rollout", "status", str(in_s1), token=it.token)
    # Not even said to exist: the same answer as for a rollout id nobody has.
    # (Beside the warning that the lab's plaintext port carries the token.)
    said = hidden.err.splitlines()[-1]
    assert (hidden.code, said) == (4, f"schoolctl: no rollout {in_s1} in your schools")
    # One host's result: only of their own schools; another school's device answers
    # as a device the rollout does not have.
    in_s2 = lab.start("mark.yml", "--select", "device=host-5")
    lab.wait_state(in_s2, {"done", "halted"}, 60)
    mine = schoolctl(address, "rollout", "status", str(in_s2), "--host", "host-5", token=it.token)
    assert mine.code == 0, mine
    answers = []
    for device in ("host-0", "host-99"):
        other = schoolctl(
            address, "rollout", "status", str(in_s2), "--host", device, token=it.token
        )
        answers.append((other.code, other.err.splitlines()[-1].replace(device, "X")))
    assert (
        answers[0]
        == answers[1]
        == (
            4,
            f"schoolctl: no host 'X' in rollout {in_s2} in your schools",
        )
    )
    denied = lab.ctl("audit", "--actor", "it-s2", "--outcome", "denied", "--json").json()
    assert {e["action"] for e in denied} >= {"rollouts.start", "rollouts.get"}


def test_pause_lets_the_wave_finish_and_resume_goes_on(lab: Lab) -> None:
    rollout_id = lab.start(
        "mark.yml",
        "--select",
        "device=host-0|host-2|host-5",  # host-1 has a lesson; 3 fails; 4 is down
        "--wave-size",
        "1",
        "--extra-vars",
        '{"marker": "paused", "pause": 2}',
    )
    wait_until(lab.ansible_pids, 30, "the first wave running")
    paused = lab.ctl("rollout", "pause", str(rollout_id), "--json")
    assert paused.code == 0, paused
    assert paused.json()["state"] == "paused"
    again = lab.ctl("rollout", "pause", str(rollout_id))
    assert again.code != 0 and "is paused, not running" in again.err
    # The running wave finishes; no other starts while paused.
    wait_until(lambda: not lab.ansible_pids() or None, 30, "the first wave done")
    time.sleep(3)
    info = lab.status(rollout_id)
    assert (info["state"], len(info["waves"]), info["counts"]["pending"]) == ("paused", 1, 2)
    resumed = lab.ctl("rollout", "resume", str(rollout_id), "--json")
    assert resumed.code == 0, resumed
    done = lab.wait_state(rollout_id, {"done", "halted"}, 60)
    assert done["state"] == "done" and len(done["waves"]) == 3
