"""The rollout benchmarks' lab set-up (bench/rollout.py, bench/rollout_replicas.py): the
benchmark's playbook where Ansible's user can read it, a controller's rollout settings
for the lab's hosts, and the hosts registered with a controller through their agents."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

from bench.rollout_lab import PLAYBOOK, PLAYBOOK_NAME, PLAYBOOK_VARS, SCHOOL
from tests.procs import Agent, Controller, schoolctl, wait_until
from tests.ssh_hosts import SshHost

log = logging.getLogger("bench")


def write_playbooks(work: Path) -> Path:
    """The benchmark's playbook and its variables file in ``work``/playbooks, readable by
    Ansible's user; that folder."""
    playbooks = work / "playbooks"
    playbooks.mkdir(mode=0o755)
    for name, text in ((PLAYBOOK_NAME, PLAYBOOK), ("bench.vars.yml", PLAYBOOK_VARS)):
        (playbooks / name).write_text(text)
        (playbooks / name).chmod(0o644)
    return playbooks


def rollout_env(playbooks: Path, ansible_dir: Path, host: SshHost) -> dict[str, str]:
    """A controller's rollout settings for the lab: the playbooks, where Ansible works,
    and the hosts' key and known_hosts (every host shares them)."""
    return {
        "SCHOOLFLEET_CONTROLLER_PLAYBOOKS_DIR": str(playbooks),
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_WORK_DIR": str(ansible_dir),
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_SSH_KEY": str(host.key_file),
        "SCHOOLFLEET_CONTROLLER_ROLLOUT_KNOWN_HOSTS": str(host.known_hosts),
    }


def register(work: Path, controller: Controller, hosts: list[SshHost], stack: ExitStack) -> None:
    """One agent per host until the registry has every address; then the agents stop."""
    log.info("registering %d hosts through their agents", len(hosts))
    agents = []
    for i, host in enumerate(hosts):
        agent = Agent(
            work,
            host.name,
            "panel",
            SCHOOL,
            f"r{i}",
            f"{host.gateway}:{controller.grpc_port}",
            extra={"heartbeat_interval": 30},
            netns=host.namespace,
        )
        stack.callback(agent.stop)
        agents.append(agent.start())
    wanted = {h.name: h.address for h in hosts}

    def registered() -> bool:
        done = schoolctl(controller.address, "devices", "list", "--json")
        if done.code != 0:
            return False
        known = {d["device_id"]: d.get("address") for d in done.json()}
        return all(known.get(name) == address for name, address in wanted.items())

    wait_until(registered, 300, "every host registered with its address", step=2)
    for agent in agents:
        agent.stop()
