"""What a rollout starts with, decided before anything is stored or run.

The strategy, the OS user waves run as, the playbook, its extra vars (checked against
the playbook's NAME.vars.yml and who asks), its syntax, and the hosts its selector
matches within the caller's schools. Values in, values out; no gRPC. Blocking (it reads
files, runs ``ansible-playbook --syntax-check`` and the store): the admin API runs it
off the event loop. A refusal is a ``RolloutRefused`` (the request's fault) or a
``RolloutConflict`` (this controller's state: what it lacks, what runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from controller.errors import RolloutConflict, RolloutRefused
from controller.fleet.store import SelectedDevice
from controller.rollouts.os_user import find_os_user
from controller.rollouts.playbook_check import check_syntax, playbook_path
from controller.rollouts.playbook_vars import check_extra_vars, read_schema
from controller.rollouts.runner import RunnerSettings, mitogen_strategy_dir
from controller.rollouts.store import NewHost
from inventory.model import DeviceStatus
from inventory.rollouts import (
    STRATEGIES,
    HostOutcome,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    Selector,
    parse_selector,
    wave_size,
)

# The fleet's store's select_devices: the devices a selector matches within schools.
SelectDevices = Callable[[Selector, frozenset[str] | None, float], list[SelectedDevice]]


@dataclass(frozen=True, slots=True)
class StartAsked:
    """A start as the caller asked for it (the spec's amounts already parsed)."""

    spec: RolloutSpec
    strategy: str
    extra_vars_json: str
    # Central ops may set the variables a playbook keeps for them.
    central: bool
    scope: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class StartPlan:
    """The rollout as it would start: its spec complete, the hosts it takes."""

    spec: RolloutSpec
    hosts: list[NewHost]


def split_offline(
    matched: Iterable[tuple[NewHost, DeviceStatus]], include_offline: bool
) -> tuple[list[NewHost], tuple[str, ...]]:
    """The hosts a rollout takes, and the offline device ids it leaves out (none when
    ``include_offline``)."""
    hosts: list[NewHost] = []
    offline: list[str] = []
    for host, status in matched:
        if include_offline or status is DeviceStatus.ONLINE:
            hosts.append(host)
        else:
            offline.append(host.device_id)
    return hosts, tuple(offline)


def preview(plan: StartPlan, now: float) -> RolloutRecord:
    """What a dry run answers: the rollout as it would start, nothing stored."""
    counts = {o: 0 for o in HostOutcome}
    counts[HostOutcome.PENDING] = len(plan.hosts)
    first = wave_size(plan.spec, len(plan.hosts), 0)
    return RolloutRecord(
        rollout_id=0,
        spec=plan.spec,
        state=RolloutState.RUNNING,
        reason=f"dry run: the first wave would take {first} host(s)",
        created_by="",
        created_at=now,
        updated_at=now,
        finished_at=None,
        counts=counts,
    )


def _strategy(asked: str, default: str) -> str:
    """The strategy a new rollout runs with: the one it asked for, else the controller's."""
    chosen = asked.strip() or default
    if chosen not in STRATEGIES:
        raise RolloutRefused(f"strategy {asked[:40]!r} is not one of {', '.join(STRATEGIES)}")
    if chosen == "mitogen" and mitogen_strategy_dir() is None:
        raise RolloutConflict(
            "strategy 'mitogen' needs Mitogen for Ansible, which this controller lacks "
            "(pip install 'mitogen>=0.3.54'); --strategy linear runs without it"
        )
    return chosen


class RolloutStarts:
    """Checks a start in the order that refuses cheaply first."""

    def __init__(
        self,
        select_devices: SelectDevices,
        playbooks_dir: Path,
        runner_settings: RunnerSettings | None,
    ) -> None:
        self._select = select_devices
        self._playbooks_dir = playbooks_dir
        self._runner = runner_settings

    def plan(self, asked: StartAsked, now: float) -> StartPlan:
        """The plan, or a RolloutRefused / RolloutConflict in one line."""
        runner = self._runner
        if runner is None:
            raise RolloutRefused("rollouts are not set up on this controller")
        spec = replace(asked.spec, strategy=_strategy(asked.strategy, runner.strategy))
        if runner.os_user:
            try:
                find_os_user(runner.os_user)
            except RolloutRefused as exc:
                raise RolloutConflict(str(exc)) from None
        path = playbook_path(self._playbooks_dir, spec.playbook)
        # Before anything is stored or run: names, types, who may set them.
        extra: dict[str, object] = {}
        if asked.extra_vars_json:
            schema = read_schema(self._playbooks_dir, spec.playbook)
            extra = check_extra_vars(asked.extra_vars_json, schema, central=asked.central)
        # Last of the playbook's checks: it runs ansible-playbook.
        check_syntax(path, spec.playbook, runner)
        found = self._select(parse_selector(spec.selector), asked.scope, now)
        if not found:
            raise RolloutRefused(f"selector {spec.selector!r} matches no devices")
        matched = [(NewHost(d.device_id, d.school_id), d.status) for d in found]
        hosts, offline = split_offline(matched, spec.include_offline)
        if not hosts:
            raise RolloutRefused(
                f"selector {spec.selector!r} matches {len(offline)} device(s), all offline: "
                "add --include-offline to try them at their last address"
            )
        return StartPlan(replace(spec, extra_vars=extra, offline_skipped=offline), hosts)
