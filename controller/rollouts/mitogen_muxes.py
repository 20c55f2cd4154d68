"""Mitogen for Ansible's connection multiplexers, started once in a rollout's zygote
(controller/rollouts/zygote.py) and shared by every wave's ansible-playbook forked from
it.

A fresh ansible-playbook on Mitogen forks its multiplexers when its strategy starts
(``ansible_mitogen.process.get_classic_worker_model``, a module-level singleton) and
each of them prepares, for its first host, the modules it sends (finding, reading and
compressing Ansible's module_utils): measured here, 0.8 to 1.2 controller core-s at
every wave. Started in the zygote, the singleton exists before the fork, so the forked
ansible-playbook finds it, its Ansible workers connect to the multiplexers over their
unix sockets as usual, and what the multiplexers prepared stays prepared.

The multiplexers keep a connection (an ssh process and a Python on the host) to each
host they reach; a wave's hosts are not the next wave's, so each wave closes its
connections when its ansible-playbook ends. They end with the zygote (Mitogen's own
exit handler in the process that started them).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping
from typing import Any

import psutil

log = logging.getLogger(__name__)

STRATEGY_PREFIX = "mitogen_"
_CONTEXT_SERVICE = "ansible_mitogen.services.ContextService"


def wanted(env: Mapping[str, str]) -> bool:
    """True when ``env`` runs Ansible with one of Mitogen's strategies."""
    return env.get("ANSIBLE_STRATEGY", "").startswith(STRATEGY_PREFIX)


def add_plugin_paths() -> None:
    """Adds Mitogen's connection and action plugins to Ansible's plugin paths, as its
    strategy does when a run starts, so that the zygote loads them beforehand (with
    their settings, ssh's long documentation for mitogen_ssh: each Ansible worker would
    parse it again), and imports its strategy's modules."""
    try:
        import ansible_mitogen.strategy

        ansible_mitogen.strategy.AnsibleWrappers()._add_plugin_paths()
    except Exception:  # Mitogen failing costs speed, not the wave
        log.warning("Mitogen's plugins did not load in the zygote", exc_info=True)


def start() -> None:
    """Starts the multiplexers in this process (single-threaded: they are forked).
    Failing, each wave starts its own, as a fresh ansible-playbook would."""
    try:
        import ansible_mitogen.process

        ansible_mitogen.process.get_classic_worker_model()
    except Exception:  # Mitogen failing costs speed, not the wave
        log.warning("Mitogen's multiplexers did not start in the zygote", exc_info=True)


def stop_connections(zygote_pid: int) -> int:
    """After a wave stopped midway (its ansible-playbook stopped before it could close
    its connections): stops every process under the zygote's other children, the
    multiplexers' ssh to the wave's hosts among them, as stopping a fresh
    ansible-playbook's tree would. Returns how many were stopped."""
    try:
        under = [p for child in psutil.Process(zygote_pid).children() for p in child.children(True)]
    except psutil.Error:
        return 0
    for proc in under:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(under, timeout=1)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return len(under)


def close_connections() -> None:
    """In a wave's ansible-playbook, at its end: closes every connection the shared
    multiplexers hold (the wave's hosts). Nothing when they were not shared."""
    process: Any = sys.modules.get("ansible_mitogen.process")
    model = getattr(process, "_classic_worker_model", None)
    if model is None:
        return
    try:
        if model.broker is None:
            model.broker = process.Broker()
        for mux in model._muxes:
            model._reconnect(mux.path)
            model.parent.call_service(_CONTEXT_SERVICE, "shutdown_all")
    except Exception:  # the next wave closes them, or the zygote
        log.warning("Mitogen's connections were not closed at the wave's end", exc_info=True)
    finally:
        with contextlib.suppress(Exception):
            model.on_binding_close()
