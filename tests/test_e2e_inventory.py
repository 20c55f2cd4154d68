"""Devices' addresses and labels, end to end: a real agent in a namespace the test makes
is recorded at its own address, another names its own; schoolctl shows them, and
``schoolfleet-inventory`` hands them to the real ``ansible-inventory``."""

from __future__ import annotations

import os
import re
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.netns import linked_namespace, needs_root
from tests.procs import BIN, Agent, Controller, Result, schoolctl, wait_until

pytestmark = pytest.mark.e2e
MANAGEMENT = "198.19.200.17"


def inventory_env(controller: Controller, tmp_path: Path) -> dict[str, str]:
    """The environment a user's shell would have: schoolctl's variables, and Ansible
    kept to files under tmp_path (never ~/.ansible)."""
    home = tmp_path / "ansible-home"
    home.mkdir(exist_ok=True)
    config = tmp_path / "ansible.cfg"
    config.write_text("[defaults]\n")
    return {
        **os.environ,
        "SCHOOLCTL_CONFIG": os.devnull,
        "SCHOOLCTL_CONTROLLER": controller.address,
        "SCHOOLCTL_TOKEN": controller.admin_token,
        "HOME": str(home),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
    }


def run(argv: list[str], env: dict[str, str]) -> Result:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    return Result(done.returncode, done.stdout, done.stderr)


@needs_root
def test_addresses_and_labels_reach_schoolctl_and_ansible(tmp_path: Path) -> None:
    with ExitStack() as stack:
        link = stack.enter_context(linked_namespace())
        controller = Controller(
            tmp_path, host=link.machine, env={"SCHOOLFLEET_CONTROLLER_HEARTBEAT_INTERVAL": "1"}
        )
        stack.callback(controller.stop)
        controller.start()

        def agent(device_id: str, room: str, netns: str = "", **extra: object) -> Agent:
            where = controller.address
            a = Agent(tmp_path, device_id, "panel", "s1", room, where, dict(extra), netns=netns)
            stack.callback(a.stop)
            return a.start()

        agent("panel-ns", "101", netns=link.namespace)
        agent("panel-lo", "102", management_address=MANAGEMENT, labels=["grade=5", "wing=north"])
        typo = agent("panel-typo", "102", management_address="panel-typo.school")

        def shown(device_id: str) -> dict[str, object] | None:
            got = schoolctl(controller.address, "devices", "show", device_id, "--json")
            if got.code != 0 or got.json()["status"] != "online":
                return None
            found: dict[str, object] = got.json()
            return found

        ns = wait_until(lambda: shown("panel-ns"), 30, "panel-ns online")
        assert (ns["address"], ns["labels"]) == (link.device, {})
        lo = wait_until(lambda: shown("panel-lo"), 30, "panel-lo online")
        assert (lo["address"], lo["labels"]) == (MANAGEMENT, {"grade": "5", "wing": "north"})
        # A bad management_address is one config problem; the stream's address is used.
        bad = wait_until(lambda: shown("panel-typo"), 30, "panel-typo online")
        assert bad["address"] == link.machine
        config = tmp_path / "agent-panel-typo.toml"
        problems = [line for line in typo.log.read_text().splitlines() if "config problem" in line]
        assert len(problems) == 1
        assert problems[0].endswith(
            f" ERROR agent: config problem: config {config}: 'management_address' "
            "'panel-typo.school' is not an IP address; using the default ''"
        )

        people = schoolctl(controller.address, "devices", "show", "panel-lo")
        assert people.code == 0
        assert re.search(rf"^address +{re.escape(MANAGEMENT)} *$", people.out, re.MULTILINE)
        assert re.search(r"^labels +grade=5, wing=north *$", people.out, re.MULTILINE)
        listed = schoolctl(controller.address, "devices", "list", "--json")
        by_id = {d["device_id"]: d for d in listed.json()}
        assert by_id["panel-ns"]["address"] == link.device
        assert by_id["panel-lo"]["labels"] == {"grade": "5", "wing": "north"}

        env = inventory_env(controller, tmp_path)
        script = str(BIN / "schoolfleet-inventory")
        ours = run([script, "--list"], env)
        assert ours.code == 0
        # schoolctl's own warning, as the controller is not on loopback and has no TLS
        # here: in the JSON, not on stderr (which Ansible would show as an error).
        assert ours.err == ""
        assert ours.json()["schoolfleet"]["vars"]["sf_inventory_warnings"] == [
            f"schoolctl: warning: no --ca-cert: your token goes to {controller.address} unencrypted"
        ]
        assert ours.json()["label_grade_5"] == {"hosts": ["panel-lo"]}

        seen = run([str(BIN / "ansible-inventory"), "-i", script, "--list"], env)
        assert seen.code == 0, seen.err
        inv = seen.json()
        assert set(inv["all"]["children"]) >= {
            "school_s1",
            "room_s1_101",
            "room_s1_102",
            "kind_panel",
            "label_grade_5",
            "label_wing_north",
        }
        assert inv["school_s1"]["hosts"] == ["panel-lo", "panel-ns", "panel-typo"]
        assert inv["room_s1_102"]["hosts"] == ["panel-lo", "panel-typo"]
        assert inv["label_wing_north"]["hosts"] == ["panel-lo"]
        hostvars = inv["_meta"]["hostvars"]
        assert hostvars["panel-ns"]["ansible_host"] == link.device
        assert hostvars["panel-ns"]["sf_room"] == "101"
        assert hostvars["panel-lo"]["ansible_host"] == MANAGEMENT
        one = run([str(BIN / "ansible-inventory"), "-i", script, "--host", "panel-lo"], env)
        assert one.code == 0, one.err
        assert one.json()["sf_labels"] == {"grade": "5", "wing": "north"}
        assert one.json()["sf_school"] == "s1"

        # The selection rollouts use, given as Ansible cannot pass arguments.
        selected = run(
            [str(BIN / "ansible-inventory"), "-i", script, "--list"],
            {**env, "SCHOOLFLEET_INVENTORY_SELECT": "label.grade=5|6"},
        )
        assert selected.code == 0, selected.err
        assert list(selected.json()["_meta"]["hostvars"]) == ["panel-lo"]


def test_the_inventory_script_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHOOLCTL_CONFIG": os.devnull,
        "SCHOOLCTL_CONTROLLER": "127.0.0.1:1",
        "SCHOOLCTL_TOKEN": "sfu_unknown",
    }
    script = str(BIN / "schoolfleet-inventory")
    cases = [
        ([], 2, "schoolfleet-inventory: one of the arguments --list --host is required"),
        (["--list", "--select", "colour=red"], 2, "schoolfleet-inventory: --select: selector"),
        (["--list"], 3, "schoolfleet-inventory: cannot reach the controller at 127.0.0.1:1"),
        (["--host", "p1"], 3, "schoolfleet-inventory: cannot reach the controller"),
    ]
    for argv, code, start in cases:
        got = run([script, *argv], env)
        assert got.code == code, (argv, got.err)
        assert got.err.startswith(start), (argv, got.err)
        assert len(got.err.splitlines()) == 1, got.err
        assert got.out == ""


def test_a_device_the_controller_does_not_know_has_no_variables(
    controller: Controller, tmp_path: Path
) -> None:
    env = inventory_env(controller, tmp_path)
    got = run([str(BIN / "schoolfleet-inventory"), "--host", "nobody"], env)
    assert (got.code, got.json(), got.err) == (0, {}, "")
    listed = run([str(BIN / "schoolfleet-inventory"), "--list"], env)
    assert listed.json()["_meta"] == {"hostvars": {}}
    assert listed.json()["all"] == {"children": ["schoolfleet"]}
    assert listed.json()["schoolfleet"]["hosts"] == []
