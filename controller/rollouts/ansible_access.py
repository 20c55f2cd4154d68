"""What plain Ansible needs to reach a user's devices as the controller's rollouts do:
the SSH user, the devices' Python and the devices' host keys.

The values come from the controller's own settings and files, never from a device; the
host keys are those of the devices the user may see, from ``rollout_known_hosts``
(inventory/known_hosts.py). Blocking (store and file): run it off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.errors import RolloutRefused
from controller.fleet.store import DeviceQuery, DeviceStore
from inventory.known_hosts import lines_for

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AnsibleAccess:
    """The controller's rollout settings a user's Ansible takes over."""

    ssh_user: str
    python_interpreter: str
    known_hosts: tuple[str, ...]


def _addresses(store: DeviceStore, scope: frozenset[str] | None, now: float) -> set[str]:
    found: set[str] = set()
    after = ""
    while True:
        page = store.list_devices(DeviceQuery(schools=scope, after_id=after, limit=_PAGE), now)
        found.update(d.identity.address for d in page if d.identity.address)
        if len(page) < _PAGE:
            return found
        after = page[-1].identity.device_id


def ansible_access(
    store: DeviceStore,
    known_hosts: Path,
    ssh_user: str,
    python_interpreter: str,
    scope: frozenset[str] | None,
    now: float,
) -> AnsibleAccess:
    """The access for a caller whose schools are ``scope`` (None: every school, and
    then every line of the file). A missing file gives no keys: every host then fails
    verification, as the controller's own rollouts would."""
    try:
        text = known_hosts.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        why = exc.strerror
        raise RolloutRefused(f"cannot read rollout_known_hosts {known_hosts}: {why}") from None
    addresses = None if scope is None else _addresses(store, scope, now)
    return AnsibleAccess(ssh_user, python_interpreter, tuple(lines_for(text, addresses)))
