"""Ansible's OS user: what a wave's worker is left with after the drop, where waves
write, and a controller whose configured user is missing refusing rollouts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from common.errors import SettingError
from controller.errors import RolloutRefused
from controller.rollouts.os_user import default_work_dir, drop_argv, find_os_user, worker_env
from controller.settings import ControllerSettings
from protos.schoolfleet.v1 import admin_pb2, admin_pb2_grpc
from tests.ansible_user import ANSIBLE_USER, ensure_ansible_user
from tests.netns import needs_root
from tests.procs import Controller

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
_SHOW = """\
import os
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), sep="|", end="|")
print(*(status[k].strip() for k in ("CapEff", "CapPrm", "CapInh", "CapAmb", "NoNewPrivs")),
      sep="|", end="|")
print(os.environ.get("HOME"), sorted(os.environ), sep="|")
"""


def test_a_missing_user_is_one_line_saying_how_to_make_it() -> None:
    with pytest.raises(RolloutRefused) as caught:
        find_os_user("sf-no-such-user")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("rollouts run Ansible as OS user 'sf-no-such-user', which does")
    assert "useradd --system" in message and 'rollout_os_user = ""' in message


def test_root_or_the_controllers_own_user_is_no_drop() -> None:
    with pytest.raises(RolloutRefused, match="root or the controller's own user"):
        find_os_user("root")


def test_waves_write_outside_the_data_folder(tmp_path: Path) -> None:
    assert default_work_dir("", tmp_path) == tmp_path / "rollouts"
    assert default_work_dir("sf-no-such-user", tmp_path) == Path(
        "/var/lib/sf-no-such-user/rollouts"
    )
    with pytest.raises(SettingError) as caught:
        ControllerSettings(data_dir=tmp_path, rollout_work_dir=tmp_path / "ansible")
    assert caught.value.key == "rollout_work_dir"
    # Ansible as the controller's own user (a lab): its folder may be anywhere.
    ControllerSettings(data_dir=tmp_path, rollout_work_dir=tmp_path / "a", rollout_os_user="")


@needs_root
def test_the_worker_runs_as_the_user_with_no_privilege_left() -> None:
    ensure_ansible_user()
    user = find_os_user(ANSIBLE_USER)
    done = subprocess.run(
        drop_argv(user, [sys.executable, "-c", _SHOW]),
        env=worker_env(user),
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    uid, euid, gid, groups, eff, prm, inh, amb, nnp, home, names = done.stdout.strip().split("|")
    assert (int(uid), int(euid), int(gid)) == (user.uid, user.uid, user.gid)
    assert groups == "[]"
    assert {eff, prm, inh, amb} == {"0000000000000000"}
    assert nnp == "1"
    assert home == str(user.home)
    assert names == str(sorted(worker_env(user)))


@pytest.mark.e2e
@needs_root
def test_a_controller_without_its_ansible_user_refuses_rollouts(tmp_path: Path) -> None:
    controller = Controller(
        tmp_path,
        env={
            "SCHOOLFLEET_CONTROLLER_PLAYBOOKS_DIR": str(PLAYBOOKS),
            "SCHOOLFLEET_CONTROLLER_ROLLOUT_OS_USER": "sf-no-such-user",
        },
    )
    try:
        controller.start()
        with grpc.insecure_channel(controller.address) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            request = admin_pb2.StartRolloutRequest(
                playbook="timesync.yml", selector="school=s1", dry_run=True
            )
            bearer = (("authorization", f"Bearer {controller.admin_token}"),)
            with pytest.raises(grpc.RpcError) as caught:
                stub.StartRollout(request, metadata=bearer, timeout=30)
        error: grpc.Call = caught.value  # type: ignore[assignment]
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = error.details() or ""
        assert details.startswith("rollouts run Ansible as OS user 'sf-no-such-user'"), details
        assert "\n" not in details
    finally:
        controller.stop()
    # Said at start too, for whoever reads the log before anyone starts a rollout.
    assert "OS user 'sf-no-such-user', which does not exist" in controller.log_text()
