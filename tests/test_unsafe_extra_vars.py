"""A rollout's extra vars reach Ansible as text: a Jinja expression in a value, at any
depth, is never evaluated on the controller and arrives on the device as written."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.rollouts.runner import RunnerSettings, WaveJob, run_wave, stop_control_masters
from inventory.rollouts import HostOutcome
from tests.netns import needs_root
from tests.ssh_hosts import ssh_hosts

pytestmark = [pytest.mark.e2e, needs_root]

# The first tasks run on the controller (assert, set_fact, debug and a delegated copy):
# where Ansible templates a value before any connection.
PLAYBOOK = """\
- name: Use the values
  hosts: all
  gather_facts: false
  tasks:
    - name: Checked locally
      ansible.builtin.assert:
        that:
          - note | length > 0
          - notes | length == 2
          - extra.k is string
        quiet: true
    - name: Copied into a fact
      ansible.builtin.set_fact:
        sf_copy: "{{ note }}|{{ notes | join('|') }}|{{ extra.k }}|{{ extra.list[0] }}"
    - name: Said on the controller
      ansible.builtin.debug:
        msg: "{{ sf_copy }}"
    - name: Written on the device
      ansible.builtin.copy:
        dest: /etc/schoolfleet/values
        content: "{{ sf_copy }}\\n"
        mode: "0644"
"""


@pytest.fixture
def control_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sfcp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_lookups_in_extra_vars_are_text_at_every_depth(tmp_path: Path, control_dir: Path) -> None:
    marks = [tmp_path / f"pwned-{n}" for n in range(5)]
    note = f"{{{{ lookup('pipe', 'touch {marks[0]}') }}}}"
    notes = [
        f"{{% for x in [1] %}}{{{{ lookup('pipe', 'touch {marks[1]}') }}}}{{% endfor %}}",
        f"{{{{ query('pipe', 'touch {marks[2]}') | first }}}}",
    ]
    extra = {
        "k": f"{{{{ lookup('file', '/etc/shadow') ~ lookup('pipe', 'touch {marks[3]}') }}}}",
        "list": [f"{{{{ 'x' | map('lookup', 'pipe', 'touch {marks[4]}') | list }}}}"],
    }
    books = tmp_path / "playbooks"
    books.mkdir()
    (books / "values.yml").write_text(PLAYBOOK)
    with ssh_hosts(1) as hosts:
        host = hosts[0]
        settings = RunnerSettings(
            forks=2,
            remote_user=host.user,
            private_key_file=host.key_file,
            known_hosts=host.known_hosts,
            control_path_dir=control_dir,
            ssh_timeout=5,
            timeout=120,
        )
        job = WaveJob(
            playbook=books / "values.yml",
            inventory={"all": {"hosts": {host.name: {"ansible_host": host.address}}}},
            hosts=[host.name],
            work_dir=tmp_path / "wave-1",
            settings=settings,
            extra_vars={"note": note, "notes": notes, "extra": extra},
            wave=1,
        )
        try:
            run = run_wave(job, lambda: False)
            assert run.results[host.name].outcome is HostOutcome.CHANGED, run
            written = host.read_file("/etc/schoolfleet/values")
        finally:
            stop_control_masters(control_dir)
    assert written == f"{note}|{'|'.join(notes)}|{extra['k']}|{extra['list'][0]}\n"
    assert [m.name for m in marks if m.exists()] == []
