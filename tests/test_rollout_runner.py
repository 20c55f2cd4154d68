"""One wave of a rollout: ansible-runner's events folded into host results, playbooks
checked before use, and real waves on namespace sshd hosts (one failing, one down, one
cancelled mid-task)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.errors import SettingError
from controller.errors import RolloutRefused
from controller.rollouts.events import MESSAGE_MAX, NO_RESULT, WaveTally, describe
from controller.rollouts.playbook_check import check_playbook
from controller.rollouts.runner import (
    CONTROL_PATH_DIR_MAX,
    RunnerSettings,
    WaveJob,
    ansible_env,
    default_forks,
    run_wave,
    stop_control_masters,
)
from inventory.rollouts import HostOutcome, HostResult
from tests.netns import needs_root
from tests.ssh_hosts import SshHost, is_alive, ssh_hosts

SCHOOLS = {"d1": "s1", "d2": "s1", "d3": "s2", "d4": "s2", "d5": "s3", "d6": "s3"}


def _event(kind: str, host: str = "", task: str = "", **data: Any) -> dict[str, Any]:
    """An event shaped as ansible-runner 2.4 hands it to event_handler (recorded from a
    run with ansible-core 2.19; fields the tally does not read left out)."""
    event_data: dict[str, Any] = {"playbook": "site.yml", "uuid": str(uuid.uuid4()), **data}
    if host:
        event_data |= {"host": host, "remote_addr": host, "task": task}
        event_data.setdefault("start", "2026-11-30T11:49:03.113686+00:00")
        event_data.setdefault("end", "2026-11-30T11:49:03.537961+00:00")
    return {
        "event": kind,
        "uuid": event_data["uuid"],
        "counter": 1,
        "created": "2026-11-30T11:49:03.539090+00:00",
        "pid": 9851,
        "event_data": event_data,
    }


def _command_failure(rc: int) -> dict[str, Any]:
    return {
        "changed": True,
        "stdout": "out",
        "stderr": "bad line\nlast err",
        "rc": rc,
        "cmd": ["sh", "-c", "exit"],
        "msg": "non-zero return code",
        "stderr_lines": ["bad line", "last err"],
        "_ansible_no_log": False,
    }


def _stats(**counts: dict[str, int]) -> dict[str, Any]:
    keys = ("changed", "dark", "failures", "ignored", "ok", "processed", "rescued", "skipped")
    event = _event("playbook_on_stats")
    event["event_data"] |= {k: counts.get(k, {}) for k in keys}
    return event


def _wave_events() -> list[dict[str, Any]]:
    unreachable = {
        "unreachable": True,
        "msg": "Task failed: Failed to connect to the host via ssh: ssh: connect to host"
        " 198.18.0.4 port 22: Connection refused\r\n",
        "changed": False,
    }
    loop: dict[str, Any] = {
        "changed": True,
        "msg": "One or more items failed",
        "results": [
            {"failed": False, "rc": 0, "item": 0, "msg": ""},
            {**_command_failure(3), "failed": True, "item": 3, "_ansible_item_label": 3},
        ],
    }
    return [
        _event("playbook_on_start"),
        _event("playbook_on_task_start", task="Ignored failure"),
        *(_event("runner_on_start", h, "Ignored failure") for h in SCHOOLS),
        _event("runner_on_ok", "d1", "Ignored failure", res={"changed": True, "rc": 0}),
        _event(
            "runner_on_failed",
            "d2",
            "Ignored failure",
            res=_command_failure(1),
            ignore_errors=True,
        ),
        _event("runner_on_failed", "d3", "Run it", res=_command_failure(2), ignore_errors=None),
        _event("runner_on_unreachable", "d4", "Ignored failure", res=unreachable),
        _event("runner_on_skipped", "d5", "Ignored failure"),
        _event("runner_item_on_failed", "d5", "Loop", res=loop["results"][1]),
        _event("runner_on_failed", "d5", "Loop", res=loop, ignore_errors=None),
        _event("runner_on_failed", "d3", "Cleanup", res={"msg": "second failure"}),
        _stats(
            changed={"d1": 1, "d3": 1},
            dark={"d4": 1},
            failures={"d3": 2, "d5": 1},
            ignored={"d2": 1},
            ok={"d1": 1, "d2": 1},
            processed={h: 1 for h in ("d1", "d2", "d3", "d4", "d5")},
        ),
    ]


def test_the_tally_reports_a_hosts_first_failure_at_once() -> None:
    tally = WaveTally(2, SCHOOLS)
    reported = [r for r in map(tally.feed, _wave_events()) if r is not None]
    assert [(r.device_id, r.outcome, r.task) for r in reported] == [
        ("d3", HostOutcome.FAILED, "Run it"),
        ("d4", HostOutcome.UNREACHABLE, "Ignored failure"),
        ("d5", HostOutcome.FAILED, "Loop"),
    ]
    assert reported[0].school_id == "s2"
    assert reported[0].wave == 2
    assert reported[0].message == "non-zero return code: last err"
    assert reported[0].finished_at is not None


def test_the_tally_gives_every_host_of_the_wave_an_outcome() -> None:
    tally = WaveTally(2, SCHOOLS)
    for event in _wave_events():
        tally.feed(event)
    assert tally.finished
    results = tally.results(SCHOOLS)
    assert {d: r.outcome for d, r in results.items()} == {
        "d1": HostOutcome.CHANGED,
        # An ignored failure is no failure.
        "d2": HostOutcome.OK,
        "d3": HostOutcome.FAILED,
        "d4": HostOutcome.UNREACHABLE,
        "d5": HostOutcome.FAILED,
        # Never processed: the play's hosts pattern left it out.
        "d6": HostOutcome.FAILED,
    }
    # The first failure is the cause, not what failed after it (an always: section).
    assert (results["d3"].task, results["d3"].message) == (
        "Run it",
        "non-zero return code: last err",
    )
    assert results["d4"].message == (
        "Failed to connect to the host via ssh: ssh: connect to host 198.18.0.4 port 22:"
        " Connection refused"
    )
    assert results["d5"].message == "item 3: non-zero return code: last err"
    assert results["d6"].message == NO_RESULT
    assert all(r.school_id == SCHOOLS[d] and r.wave == 2 for d, r in results.items())
    assert (results["d1"].task, results["d1"].message) == ("", "")


def test_a_failure_a_rescue_handled_is_not_the_hosts_outcome() -> None:
    tally = WaveTally()
    assert tally.feed(_event("runner_on_failed", "d1", "Try", res={"msg": "no"})) is not None
    tally.feed(_event("runner_on_ok", "d1", "Rescue it", res={"changed": True}))
    tally.feed(_stats(changed={"d1": 1}, rescued={"d1": 1}, processed={"d1": 1}))
    assert tally.results(["d1"])["d1"].outcome is HostOutcome.CHANGED

    # A failure after a rescued one is the cause.
    tally = WaveTally()
    tally.feed(_event("runner_on_failed", "d1", "Try", res={"msg": "rescued"}))
    tally.feed(_event("runner_on_failed", "d1", "Rescue it", res={"msg": "for real"}))
    tally.feed(_stats(failures={"d1": 1}, rescued={"d1": 1}, processed={"d1": 1}))
    result = tally.results(["d1"])["d1"]
    assert (result.outcome, result.task, result.message) == (
        HostOutcome.FAILED,
        "Rescue it",
        "for real",
    )


def test_a_run_without_stats_cancels_or_fails_the_hosts_it_did_not_finish() -> None:
    events = [
        _event("runner_on_start", "d1", "Sleep"),
        _event("runner_on_start", "d2", "Sleep"),
        _event("runner_on_failed", "d2", "Sleep", res={"rc": 1}),
    ]
    tally = WaveTally()
    for event in events:
        tally.feed(event)
    assert not tally.finished
    cancelled = tally.results(["d1", "d2", "d3"], cancelled=True)
    # d1 had begun a task (it may be half changed); d3 had not.
    assert {d: r.outcome for d, r in cancelled.items()} == {
        "d1": HostOutcome.INTERRUPTED,
        "d2": HostOutcome.FAILED,
        "d3": HostOutcome.CANCELLED,
    }
    assert cancelled["d2"].message == "exit code 1"
    assert cancelled["d1"].finished_at is None
    died = tally.results(["d1", "d3"])
    assert [(r.outcome, r.message) for r in died.values()] == [
        (HostOutcome.FAILED, NO_RESULT),
        (HostOutcome.FAILED, NO_RESULT),
    ]
    # The task it was in when the run ended, where there was one.
    assert (died["d1"].task, died["d3"].task) == ("Sleep", "")


def test_a_failure_message_is_one_short_line() -> None:
    long = describe({"msg": "first\nsecond\t" + "x" * 1000})
    assert long.startswith("first second xxx")
    assert len(long) == MESSAGE_MAX
    assert long.endswith("…")
    assert describe({"module_stderr": "Traceback\nKeyError: 'x'\n", "msg": "MODULE FAILURE"}) == (
        "MODULE FAILURE: KeyError: 'x'"
    )
    assert describe({"stderr": "only stderr\n"}) == "only stderr"
    assert describe({"censored": "the output has been hidden"}) == "the output has been hidden"
    assert describe({}) == ""


def test_unrelated_and_malformed_events_are_ignored() -> None:
    tally = WaveTally()
    for event in (
        {"event": "verbose", "event_data": {}},
        {"event": "runner_on_failed"},
        {"event": "runner_on_failed", "event_data": {"host": None}},
        _event("playbook_on_task_start", task="x"),
        _event("runner_on_failed", "d1", "x", res="not a dict"),
    ):
        tally.feed(event)
    assert tally.results(["d1"])["d1"].message == "failed"


@pytest.fixture
def control_dir() -> Iterator[Path]:
    """A short folder for ssh's control sockets, whatever TMPDIR is."""
    path = Path(tempfile.mkdtemp(prefix="sfcp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _settings(control_dir: Path, known_hosts: Path, **kwargs: Any) -> RunnerSettings:
    return RunnerSettings(
        remote_user="root", known_hosts=known_hosts, control_path_dir=control_dir, **kwargs
    )


def test_settings_refuse_a_control_folder_too_long_for_ssh(
    tmp_path: Path, control_dir: Path
) -> None:
    longest = control_dir / ("x" * (CONTROL_PATH_DIR_MAX - len(str(control_dir)) - 1))
    assert _settings(longest, tmp_path / "known_hosts").control_path_dir == longest
    with pytest.raises(SettingError, match="too long for ssh's socket paths") as caught:
        _settings(Path(f"{longest}y"), tmp_path / "known_hosts")
    assert caught.value.key == "control_path_dir"
    with pytest.raises(SettingError, match="must be absolute"):
        _settings(Path("relative"), tmp_path / "known_hosts")
    with pytest.raises(SettingError, match="'forks'"):
        _settings(control_dir, tmp_path / "known_hosts", forks=0)
    assert _settings(control_dir, tmp_path / "known_hosts").forks == default_forks()
    assert 2 <= default_forks() <= 20


def test_the_ansible_environment_reads_nothing_from_this_machine(
    tmp_path: Path, control_dir: Path
) -> None:
    key = tmp_path / "id key"
    settings = _settings(
        control_dir, tmp_path / "known hosts", private_key_file=key, strategy="linear"
    )
    env = ansible_env(settings, tmp_path / "home")
    assert env["PATH"].split(":")[0] == str(settings.ansible_bin_dir)
    assert (settings.ansible_bin_dir / "ansible-playbook").exists()
    config = Path(env["ANSIBLE_CONFIG"])
    assert config.parent == tmp_path / "home"
    assert config.read_text() == ""
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    assert env["ANSIBLE_GATHERING"] == "explicit"
    assert env["ANSIBLE_PRIVATE_KEY_FILE"] == str(key)
    assert env["ANSIBLE_SSH_CONTROL_PATH_DIR"] == str(control_dir)
    ssh_args = env["ANSIBLE_SSH_ARGS"]
    assert f"UserKnownHostsFile='{tmp_path}/known hosts'" in ssh_args
    for arg in ("GlobalKnownHostsFile=/dev/null", "ControlMaster=auto", "ControlPersist=60s"):
        assert arg in ssh_args
    no_persist = ansible_env(_settings(control_dir, key, control_persist=0), tmp_path / "h2")
    assert "ControlMaster" not in no_persist["ANSIBLE_SSH_ARGS"]
    assert "ANSIBLE_PRIVATE_KEY_FILE" not in no_persist
    # Mitogen keeps its own connection per host: no ssh masters.
    mitogen = ansible_env(_settings(control_dir, key, strategy="mitogen"), tmp_path / "h3")
    assert "ControlMaster" not in mitogen["ANSIBLE_SSH_ARGS"]
    assert "StrictHostKeyChecking=yes" in mitogen["ANSIBLE_SSH_ARGS"]


GOOD_PLAYBOOK = """\
- name: Roll out the marker
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the marker
      ansible.builtin.copy:
        dest: /etc/schoolfleet/marker
        content: "{{ sf_release }}-{{ inventory_hostname }}\\n"
        mode: "0644"
    - name: Fail where asked
      ansible.builtin.fail:
        msg: "asked to fail on {{ inventory_hostname }}"
      when: sf_fail_here | default(false) | bool
"""


def test_check_playbook_refuses_what_ansible_could_not_run(
    tmp_path: Path, control_dir: Path
) -> None:
    settings = _settings(control_dir, tmp_path / "known_hosts")
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "site.yml").write_text(GOOD_PLAYBOOK)
    (books / "broken.yaml").write_text("- name: x\n  hosts: all\n  tasks: [\n")
    (books / "plain.yml").write_text("name: x\nhosts: all\n")
    (books / "typo.yml").write_text(
        "- name: x\n  hosts: all\n  tasks:\n    - name: y\n      ansible.builtin.nosuch: {}\n"
    )
    (books / "notes.txt").write_text("not a playbook")

    def refused(name: str) -> str:
        with pytest.raises(RolloutRefused) as caught:
            check_playbook(books, name, settings)
        message = str(caught.value)
        assert "\n" not in message
        return message

    assert check_playbook(books, "site.yml", settings) == books.absolute() / "site.yml"
    for name in ("../site.yml", "sub/site.yml", "/etc/passwd.yml", "site", "site.yml.bak"):
        assert "names a file in the controller's playbook folder" in refused(name)
    assert refused("nope.yml") == (
        f"playbook 'nope.yml' is not in {books}; available: broken.yaml, plain.yml,"
        " site.yml, typo.yml"
    )
    assert refused("broken.yaml").startswith("playbook 'broken.yaml' is not valid YAML (line 4)")
    assert "is not a list of plays" in refused("plain.yml")
    assert refused("typo.yml") == (
        "playbook 'typo.yml': couldn't resolve module/action 'ansible.builtin.nosuch'. This"
        " often indicates a misspelling, missing collection, or incorrect module path."
        " (line 4)"
    )


def test_a_playbook_ansible_cannot_run_fails_every_host_with_ansibles_error(
    tmp_path: Path, control_dir: Path
) -> None:
    # Past the YAML checks, and ansible stops before it connects to anyone.
    playbook = tmp_path / "bad.yml"
    playbook.write_text('- name: x\n  hosts: "{{ nope }}"\n  tasks: []\n')
    job = WaveJob(
        playbook=playbook,
        inventory={"all": {"hosts": {"d1": {"ansible_host": "198.18.0.1"}, "d2": {}}}},
        hosts=["d1", "d2"],
        work_dir=tmp_path / "wave",
        settings=_settings(control_dir, tmp_path / "known_hosts"),
    )
    heard: list[HostResult] = []
    run = run_wave(job, lambda: False, heard.append)
    assert run.status == "failed"
    assert run.error == "Error processing keyword 'hosts': 'nope' is undefined (line 2)"
    assert {r.outcome for r in run.results.values()} == {HostOutcome.FAILED}
    assert run.results["d1"].message == f"{NO_RESULT}: {run.error}"
    assert sorted(r.device_id for r in heard) == ["d1", "d2"]
    with pytest.raises(FileExistsError):
        run_wave(job, lambda: False)
    with pytest.raises(ValueError, match="missing from the wave's inventory: d3"):
        run_wave(replace(job, hosts=["d1", "d3"], work_dir=tmp_path / "w2"), lambda: False)


def _wave_settings(hosts: list[SshHost], control_dir: Path, timeout: float = 120) -> RunnerSettings:
    """The hosts' key and pinned host keys, given to the product's own settings."""
    return RunnerSettings(
        forks=4,
        remote_user=hosts[0].user,
        private_key_file=hosts[0].key_file,
        known_hosts=hosts[0].known_hosts,
        control_path_dir=control_dir,
        ssh_timeout=5,
        timeout=timeout,
        # Ansible's own strategy, whose ssh masters these tests follow; Mitogen's waves
        # (the default) are in test_wave_worker.py and the end-to-end tests.
        strategy="linear",
    )


def _inventory(hosts: list[SshHost], **host_vars: dict[str, Any]) -> dict[str, Any]:
    return {
        "all": {
            "hosts": {
                h.name: {"ansible_host": h.address, **host_vars.get(h.name, {})} for h in hosts
            }
        }
    }


def _alive(pid: int) -> bool:
    try:
        return is_alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def _descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


@pytest.mark.e2e
@needs_root
def test_a_wave_reports_each_hosts_outcome(tmp_path: Path, control_dir: Path) -> None:
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "marker.yml").write_text(GOOD_PLAYBOOK)
    seen: list[psutil.Process] = []
    with ssh_hosts(4) as hosts:
        ok0, failing, down, ok3 = hosts
        down.stop()
        settings = _wave_settings(hosts, control_dir)
        job = WaveJob(
            playbook=check_playbook(books, "marker.yml", settings),
            inventory=_inventory(hosts, **{failing.name: {"sf_fail_here": True}}),
            hosts=[h.name for h in hosts],
            work_dir=tmp_path / "wave-1",
            settings=settings,
            extra_vars={"sf_release": "r7"},
            wave=1,
            schools={h.name: f"school-{i % 2}" for i, h in enumerate(hosts)},
        )
        heard: list[HostResult] = []
        run = run_wave(job, lambda: False, heard.append)

        assert run.status == "failed", run
        assert {d: r.outcome for d, r in run.results.items()} == {
            ok0.name: HostOutcome.CHANGED,
            failing.name: HostOutcome.FAILED,
            down.name: HostOutcome.UNREACHABLE,
            ok3.name: HostOutcome.CHANGED,
        }
        for host in (ok0, ok3):
            assert host.read_file("/etc/schoolfleet/marker") == f"r7-{host.name}\n"
        # The failing host wrote its marker before the task that failed.
        assert failing.read_file("/etc/schoolfleet/marker") == f"r7-{failing.name}\n"
        failed = run.results[failing.name]
        assert (failed.task, failed.message) == (
            "Fail where asked",
            f"asked to fail on {failing.name}",
        )
        lost = run.results[down.name]
        assert lost.task == "Write the marker"
        assert "Connection refused" in lost.message, lost
        assert all(r.wave == 1 and r.school_id == job.schools[d] for d, r in run.results.items())
        # Each host heard once, as it ended.
        assert sorted(heard, key=lambda r: r.device_id) == sorted(
            run.results.values(), key=lambda r: r.device_id
        )
        assert (run.artifact_dir / "stdout").exists()
        assert not Path("/etc/schoolfleet/marker").exists()

        # The masters the engine would reuse for the next wave: stopped by pid here.
        seen += [psutil.Process(pid) for h in (ok0, failing, ok3) for pid in h.session_pids()]
        masters = stop_control_masters(control_dir)
        assert len(masters) == 3
        assert not [pid for pid in masters if _alive(pid)]
    assert not [p.pid for p in seen if is_alive(p)]


SLEEP_PLAYBOOK = """\
- name: Take long
  hosts: all
  gather_facts: false
  tasks:
    - name: Sleep
      ansible.builtin.command: sleep 30
"""


def _ansible_playbook() -> psutil.Process | None:
    for proc in _descendants():
        try:
            if any(arg.endswith("/ansible-playbook") for arg in proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def _sleeping_on(host: SshHost) -> bool:
    names = []
    for pid in host.session_pids():
        try:
            names.append(psutil.Process(pid).name())
        except psutil.NoSuchProcess:
            continue
    return "sleep" in names


@pytest.mark.e2e
@needs_root
def test_a_cancelled_wave_stops_ansible_and_its_ssh(tmp_path: Path, control_dir: Path) -> None:
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "sleep.yml").write_text(SLEEP_PLAYBOOK)
    with ssh_hosts(2) as hosts:
        settings = _wave_settings(hosts, control_dir)
        job = WaveJob(
            playbook=check_playbook(books, "sleep.yml", settings),
            inventory=_inventory(hosts),
            hosts=[h.name for h in hosts],
            work_dir=tmp_path / "wave-1",
            settings=settings,
        )
        cancel = threading.Event()
        runs: list[Any] = []
        started = time.monotonic()
        worker = threading.Thread(target=lambda: runs.append(run_wave(job, cancel.is_set)))
        worker.start()
        try:
            # Until both hosts run the sleep: ansible's workers and their ssh are up.
            deadline = started + 30
            while not all(_sleeping_on(h) for h in hosts) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert all(_sleeping_on(h) for h in hosts), "the sleep never started"
            main = _ansible_playbook()
            assert main is not None
            under = main.children(recursive=True)
            assert any(p.name() == "ssh" for p in under), under
        finally:
            cancelled_at = time.monotonic()
            cancel.set()
            worker.join(30)
        returned = time.monotonic() - cancelled_at
        assert not worker.is_alive()
        (run,) = runs
        assert run.status == "canceled"
        # Both were in the middle of the sleep: stopped mid-task, maybe half-changed.
        assert {r.outcome for r in run.results.values()} == {HostOutcome.INTERRUPTED}
        assert returned < 2.5, f"run_wave took {returned:.1f}s to return after the cancel"
        assert time.monotonic() - started < 10
        # ansible-playbook, its workers and their ssh: gone by the time run_wave returned.
        assert not [p.pid for p in [main, *under] if is_alive(p)]
        masters = stop_control_masters(control_dir)
        assert masters
        assert not [pid for pid in masters if _alive(pid)]


@pytest.mark.e2e
@needs_root
def test_a_wave_past_its_timeout_is_stopped_and_its_hosts_fail(
    tmp_path: Path, control_dir: Path
) -> None:
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "sleep.yml").write_text(SLEEP_PLAYBOOK)
    with ssh_hosts(1) as (host,):
        settings = _wave_settings([host], control_dir, timeout=3)
        job = WaveJob(
            playbook=check_playbook(books, "sleep.yml", settings),
            inventory=_inventory([host]),
            hosts=[host.name],
            work_dir=tmp_path / "wave-1",
            settings=settings,
        )
        started = time.monotonic()
        run = run_wave(job, lambda: False)
        took = time.monotonic() - started
        assert run.status == "timeout"
        result = run.results[host.name]
        assert (result.outcome, result.message) == (
            HostOutcome.FAILED,
            "the wave timed out after 3 s",
        )
        assert result.task == "Sleep"
        assert 3 <= took < 5, took
        assert _ansible_playbook() is None
        masters = stop_control_masters(control_dir)
        assert len(masters) == 1
        assert not [pid for pid in masters if _alive(pid)]
