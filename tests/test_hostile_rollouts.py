"""A school's IT user attacks the controller's host through StartRollout's extra vars,
over raw gRPC: lookups that run commands or read files, in strings and nested lists and
mappings; unsafe-tag look-alikes; Ansible's connection and magic variables; values
30,000 deep and 10 MB large. What the playbook's schema refuses is refused in one line
naming the variable, with no rollout stored; what it allows runs as text: no command
runs on the controller and no connection goes anywhere but the device's address.
Ansible itself runs as its own OS user: a playbook that tries to read the controller's
CA key and database fails."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from protos.schoolfleet.v1 import admin_pb2, admin_pb2_grpc
from tests.ansible_user import ansible_work_dir, ensure_ansible_user, readable_playbooks
from tests.netns import needs_root
from tests.procs import Agent, Controller, init_controller_ca, wait_until
from tests.ssh_hosts import SshHost, ssh_hosts

pytestmark = [pytest.mark.e2e, needs_root]

REPO_PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
SCHOOL = "s1"
# Free text a school may set: the values reach the tasks, which use them on the
# controller (assert, debug) and on the device (the file the test reads back).
NOTE = """\
- name: Use what the school gave
  hosts: all
  gather_facts: false
  tasks:
    - name: Checked on the controller
      ansible.builtin.assert:
        that:
          - note | length > 0
        quiet: true
    - name: Said on the controller
      ansible.builtin.debug:
        msg: "{{ note }} {{ notes | default([]) }} {{ extra | default({}) }}"
    - name: Written on the device
      ansible.builtin.copy:
        dest: /etc/schoolfleet/note
        content: "{{ ([note] + notes | default([]) + (extra | default({})).values() | list)
          | join('\\n') }}\\n"
        mode: "0644"
"""
NOTE_VARS = """\
note: {type: str, max: 4000, school_it: true}
notes: {type: list, items: {type: str}, school_it: true}
extra: {type: dict, values: {type: str}, school_it: true}
"""
# A playbook gone bad (central-ops' own): it reads the controller's files.
STEAL = """\
- name: Read the controller's files
  hosts: all
  gather_facts: false
  tasks:
    - name: Read {what}
      ansible.builtin.command: cat {path}
      delegate_to: localhost
      changed_when: false
"""
CONNECTION_VARS = [
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "ansible_connection",
    "ansible_ssh_common_args",
    "ansible_ssh_extra_args",
    "ansible_ssh_executable",
    "ansible_ssh_private_key_file",
    "ansible_python_interpreter",
    "ansible_shell_executable",
    "ansible_become",
    "ansible_become_method",
    "ansible_become_exe",
    "ansible_become_user",
    "ansible_password",
    "ansible_network_os",
]
MAGIC_VARS = [
    "hostvars",
    "groups",
    "group_names",
    "inventory_hostname",
    "omit",
    "playbook_dir",
    "role_path",
    "environment",
    "vars",
]


@dataclass
class Lab:
    controller: Controller
    channel: grpc.Channel
    school_it: str
    marks: Path
    host: SshHost
    trap: Trap

    def start(
        self,
        playbook: str,
        extra: str,
        token: str = "",
        dry_run: bool = False,
        strategy: str = "",
    ) -> tuple[grpc.StatusCode, str, admin_pb2.RolloutInfo | None]:
        stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        request = admin_pb2.StartRolloutRequest(
            playbook=playbook,
            selector=f"school={SCHOOL}",
            extra_vars_json=extra,
            dry_run=dry_run,
            strategy=strategy,
        )
        bearer = (("authorization", f"Bearer {token or self.school_it}"),)
        try:
            info = stub.StartRollout(request, metadata=bearer, timeout=60)
        except grpc.RpcError as exc:
            call: grpc.Call = exc  # type: ignore[assignment]
            return call.code(), call.details() or "", None
        return grpc.StatusCode.OK, "", info

    def get(self, rollout_id: int) -> admin_pb2.RolloutInfo:
        stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        bearer = (("authorization", f"Bearer {self.controller.admin_token}"),)
        info: admin_pb2.RolloutInfo = stub.GetRollout(
            admin_pb2.GetRolloutRequest(rollout_id=rollout_id), metadata=bearer, timeout=10
        )
        return info

    def finished(self, rollout_id: int) -> admin_pb2.RolloutInfo:
        return wait_until(
            lambda: ((i := self.get(rollout_id)).state in ("done", "halted") and i) or None,
            120,
            f"rollout {rollout_id} finished",
            step=0.5,
        )

    def rollouts_stored(self) -> int:
        uri = f"file:{self.controller.database}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            count: int = db.execute("SELECT count(*) FROM rollouts").fetchone()[0]
        return count


class Trap:
    """A TCP listener on another loopback address: counts whoever connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.9", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    ensure_ansible_user()
    # A folder others may enter: only the controller's own modes keep its data private.
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sf-hr-", dir="/tmp")))
        work.chmod(0o755)
        marks = work / "marks"
        marks.mkdir(mode=0o777)
        marks.chmod(0o777)  # a command run as any user could leave its mark here
        pki = init_controller_ca(work / "data")
        source = work / "source"
        source.mkdir()
        for name in ("timesync.yml", "timesync.vars.yml", "group_vars", "templates"):
            src = REPO_PLAYBOOKS / name
            dest = source / name
            if src.is_dir():
                shutil.copytree(src, dest)
            else:
                dest.write_text(src.read_text())
        (source / "note.yml").write_text(NOTE)
        (source / "note.vars.yml").write_text(NOTE_VARS)
        (source / "steal_key.yml").write_text(STEAL.format(what="the CA key", path=pki / "ca.key"))
        (source / "steal_db.yml").write_text(
            STEAL.format(what="the database", path=work / "controller.db")
        )
        playbooks = stack.enter_context(readable_playbooks(source))
        ansible_dir = stack.enter_context(ansible_work_dir())
        hosts = stack.enter_context(ssh_hosts(1))
        host = hosts[0]
        controller = Controller(
            work,
            host=host.gateway,
            env={
                "SCHOOLFLEET_CONTROLLER_DATA_DIR": str(work / "data"),
                "SCHOOLFLEET_CONTROLLER_PLAYBOOKS_DIR": str(playbooks),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_WORK_DIR": str(ansible_dir),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_SSH_KEY": str(host.key_file),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_KNOWN_HOSTS": str(host.known_hosts),
                "SCHOOLFLEET_CONTROLLER_ROLLOUT_RECHECK": "1",
            },
        )
        stack.callback(controller.stop)
        controller.start()
        agent = Agent(
            work,
            host.name,
            "panel",
            SCHOOL,
            "r1",
            f"{host.gateway}:{controller.grpc_port}",
            extra={"heartbeat_interval": 2},
            netns=host.namespace,
        )
        stack.callback(agent.stop)
        agent.start()
        options = [("grpc.max_send_message_length", 16 * 1024 * 1024)]
        channel = grpc.insecure_channel(controller.address, options=options)
        stack.callback(channel.close)
        trap = Trap()
        stack.callback(trap.close)
        it = controller.create_user("it-s1", "school-it", SCHOOL)
        lab = Lab(controller, channel, it.token, marks, host, trap)

        def registered() -> bool | None:
            code, _, _ = lab.start("note.yml", '{"note": "x"}', dry_run=True)
            return code == grpc.StatusCode.OK or None

        wait_until(registered, 60, "the device registered with its address")
        yield lab


def _lookup(n: int, lab: Lab) -> str:
    return f"{{{{ lookup('pipe', 'touch {lab.marks}/m{n}') }}}}"


def _refused(lab: Lab, playbook: str, extra: str, name: str) -> None:
    before = lab.rollouts_stored()
    for dry_run in (True, False):
        code, details, _ = lab.start(playbook, extra, dry_run=dry_run)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        assert f"extra var {name!r}" in details, (name, details)
        assert "\n" not in details and len(details) < 400, details
    assert lab.rollouts_stored() == before, f"{name}: a rollout was stored"


def test_connection_and_magic_variables_are_refused(lab: Lab) -> None:
    for name in CONNECTION_VARS:
        value: object = lab.trap.port if name.endswith("port") else "127.0.0.9"
        if name == "ansible_ssh_common_args":
            value = f"-o ProxyCommand='sh -c \"touch {lab.marks}/proxy\"'"
        _refused(lab, "note.yml", json.dumps({"note": "x", name: value}), name)
    for name in MAGIC_VARS:
        _refused(lab, "note.yml", json.dumps({name: {"a": "b"}}), name)
    _refused(lab, "note.yml", json.dumps({"sf_anything": 1}), "sf_anything")
    assert list(lab.marks.iterdir()) == []


def test_a_strategy_is_one_of_two_names_never_a_plugin_or_path(lab: Lab) -> None:
    """The strategy is chosen by name from two; nothing else reaches Ansible's loader."""
    before = lab.rollouts_stored()
    for asked in [
        "free",
        "host_pinned",
        "mitogen_free",
        "ansible.builtin.free",
        "../../../tmp/evil",
        f"{lab.marks}/evil",
        "linear\n- hosts: all",
        f"{{{{ lookup('pipe', 'touch {lab.marks}/strategy') }}}}",
        "LINEAR",
        "x" * 10_000,
    ]:
        for dry_run in (True, False):
            code, details, _ = lab.start(
                "note.yml", '{"note": "x"}', strategy=asked, dry_run=dry_run
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (asked[:40], code, details)
            assert "strategy" in details and "mitogen, linear" in details, details
            assert "\n" not in details and len(details) < 400, details
    assert lab.rollouts_stored() == before
    assert list(lab.marks.iterdir()) == []


def test_lookups_where_the_schema_wants_plain_values_are_refused(lab: Lab) -> None:
    cases: list[dict[str, object]] = [
        {"sf_ntp_servers": [_lookup(1, lab)]},
        {"sf_ntp_servers": ["ntp.example", f"{{% set x = {_lookup(2, lab)} %}}"]},
        {"sf_ntp_servers": {"__ansible_unsafe": _lookup(3, lab)}},
        {"sf_ntp_servers": [{"__ansible_unsafe": "ntp.example"}]},
        {"sf_ntp_servers": ["!unsafe ntp.example"]},
        {"sf_ntp_servers": [[_lookup(4, lab)]]},
        {"sf_ntp_fallback_servers": ["{{ query('file', '/etc/shadow') }}"]},
    ]
    for case in cases:
        name = next(iter(case))
        _refused(lab, "timesync.yml", json.dumps(case), name)
    # Central-ops' own variables are not a school's, lookups or not.
    _refused(lab, "timesync.yml", '{"sf_manage_packages": false}', "sf_manage_packages")
    _refused(lab, "note.yml", json.dumps({"extra": {"__ansible_unsafe": _lookup(5, lab)}}), "extra")
    assert list(lab.marks.iterdir()) == []


def test_deep_and_huge_values_are_refused(lab: Lab) -> None:
    deep = '{"notes": ' + "[" * 30_000 + "]" * 30_000 + "}"
    _refused(lab, "note.yml", deep, "notes")
    deep_mapping = '{"extra": ' + '{"a": ' * 30_000 + '"x"' + "}" * 30_001
    _refused(lab, "note.yml", deep_mapping, "extra")
    _refused(lab, "note.yml", json.dumps({"note": "x" * 900_000}), "note")
    before = lab.rollouts_stored()
    code, details, _ = lab.start("note.yml", json.dumps({"note": "x" * 10_000_000}))
    # Larger than any admin request may be: gRPC itself refuses it, before any handler.
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
    assert len(details) < 400
    assert lab.rollouts_stored() == before


def test_allowed_free_text_runs_as_text_and_connects_nowhere_else(lab: Lab) -> None:
    note = _lookup(10, lab)
    notes = [
        f"{{% for x in [1] %}}{_lookup(11, lab)}{{% endfor %}}",
        f"!unsafe {_lookup(12, lab)}",
        f"{{{{ query('pipe', 'nc -z 127.0.0.9 {lab.trap.port}; touch {lab.marks}/m13') }}}}",
        "{{ lookup('file', '/etc/shadow') }}",
    ]
    extra = {
        "k": f"{{{{ lookup('url', 'http://127.0.0.9:{lab.trap.port}/') }}}}",
        "unsafe": "{\"__ansible_unsafe\": \"{{ lookup('pipe', 'id') }}\"}",
    }
    text = json.dumps({"note": note, "notes": notes, "extra": extra})
    code, details, info = lab.start("note.yml", text)
    assert code == grpc.StatusCode.OK, details
    assert info is not None
    done = lab.finished(info.rollout_id)
    assert [h.outcome for h in done.hosts] == ["changed"], done
    assert (
        lab.host.read_file("/etc/schoolfleet/note")
        == "\n".join([note, *notes, *extra.values()]) + "\n"
    )
    assert list(lab.marks.iterdir()) == []
    assert lab.trap.connections == 0


def test_ansible_cannot_read_the_controllers_ca_key_or_database(lab: Lab) -> None:
    for playbook, what in (("steal_key.yml", "ca.key"), ("steal_db.yml", "controller.db")):
        code, details, info = lab.start(playbook, "", token=lab.controller.admin_token)
        assert code == grpc.StatusCode.OK, details
        assert info is not None
        done = lab.finished(info.rollout_id)
        [host] = done.hosts
        assert host.outcome == "failed", done
        assert host.task.startswith("Read the"), host
        assert what in host.message and "Permission denied" in host.message, host.message
