"""AdminService's rollouts: start (every check before anything runs), follow, pause,
resume, abort, retry; and schools' maintenance windows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import grpc

from controller.api.guard import Call, Guard, Refused, guarded, invalid
from controller.errors import HostsClaimed, RolloutConflict, RolloutRefused
from controller.fleet.store import DeviceStore
from controller.people.access import Need
from controller.rollouts.ansible_access import ansible_access
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.playbook_check import playbook_names
from controller.rollouts.runner import RunnerSettings
from controller.rollouts.starting import RolloutStarts, StartAsked, preview, split_offline
from controller.rollouts.store import NewHost, RolloutQuery, RolloutStore
from inventory.model import DeviceStatus, valid_id
from inventory.people import Outcome, Role
from inventory.rollouts import (
    HostOutcome,
    HostResult,
    RolloutInputError,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    Selector,
    parse_amount,
    parse_percent,
    parse_selector,
)
from inventory.school_day import WindowError, parse_window
from protos.schoolfleet.v1 import admin_pb2
from wire.rollouts import rollout_to_pb

LIST_MAX = 500
WINDOWS_MAX = 14
# RetryRollout: which hosts of a finished rollout each word takes.
RETRY_HOSTS = {
    # Tried and not changed as asked, or stopped half way by an abort.
    "failed": frozenset({HostOutcome.FAILED, HostOutcome.UNREACHABLE, HostOutcome.INTERRUPTED}),
    # Never tried: the rollout ended first (devices offline at the start are added).
    "not-reached": frozenset({HostOutcome.CANCELLED}),
}


def _each_school(schools: Iterable[str]) -> list[str | None]:
    """The schools to check the caller against; None alone: a request across schools."""
    return [*sorted(schools)] or [None]


def _conflict(message: str) -> Refused:
    return Refused(grpc.StatusCode.FAILED_PRECONDITION, message, Outcome.FAILED)


def _spec(request: admin_pb2.StartRolloutRequest) -> RolloutSpec:
    try:
        parse_selector(request.selector)
        return RolloutSpec(
            playbook=request.playbook,
            selector=request.selector,
            canary=parse_amount(request.canary or "1", "canary"),
            wave_size=parse_amount(request.wave_size or "10%", "wave size"),
            max_fail=parse_percent(request.max_fail or "5", "max fail"),
            gate_lessons=request.gate_lessons,
            include_offline=request.include_offline,
        )
    except RolloutInputError as exc:
        raise invalid(str(exc)) from None


class RolloutAdmin:
    """Rollouts (start, follow, pause, resume, abort, retry) and maintenance windows;
    a selector is resolved in the fleet's store."""

    def __init__(
        self,
        guard: Guard,
        rollouts: RolloutStore,
        devices: DeviceStore,
        engine: RolloutEngine | None,
        playbooks_dir: Path,
        runner_settings: RunnerSettings | None,
    ) -> None:
        self.guard = guard
        self._rollouts = rollouts
        self._devices = devices
        self._running = engine
        self._playbooks_dir = playbooks_dir
        self._runner_settings = runner_settings
        self._starts = RolloutStarts(devices.select_devices, playbooks_dir, runner_settings)

    def _engine(self) -> RolloutEngine:
        if self._running is None:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, "rollouts are not running here", Outcome.FAILED
            )
        return self._running

    async def _hosts(
        self, selector: Selector, scope: frozenset[str] | None
    ) -> list[tuple[NewHost, DeviceStatus]]:
        """The registry's devices the selector matches, within the caller's schools,
        with whether each is online now."""
        found = await self.guard.off_loop(
            self._devices.select_devices, selector, scope, self.guard.now()
        )
        return [(NewHost(d.device_id, d.school_id), d.status) for d in found]

    async def _rollout(self, call: Call, rollout_id: int, need: Need) -> RolloutRecord:
        """The rollout, if the caller may see (or change) every school it touches."""
        call.target = str(rollout_id)
        record = await self.guard.off_loop(self._rollouts.get_rollout, rollout_id)
        schools = None
        if record is not None:
            schools = await self.guard.off_loop(self._rollouts.rollout_schools, rollout_id)
        call.allow_target(need, schools, f"rollout {rollout_id}")
        assert record is not None
        return record

    async def _info(self, record: RolloutRecord) -> admin_pb2.RolloutInfo:
        hosts: list[HostResult] = await self.guard.off_loop(
            self._rollouts.rollout_hosts, record.rollout_id
        )
        return rollout_to_pb(record, hosts)

    @guarded("rollouts.start", Need.CHANGE, audited=True)
    async def StartRollout(
        self, request: admin_pb2.StartRolloutRequest, call: Call
    ) -> admin_pb2.RolloutInfo:
        call.target = request.playbook[:200]
        spec = _spec(request)
        selector = parse_selector(spec.selector)
        for school in _each_school(selector.schools):
            call.allow(Need.CHANGE, school)
        asked = StartAsked(
            spec=spec,
            strategy=request.strategy,
            extra_vars_json=request.extra_vars_json,
            central=call.who.role is Role.CENTRAL_OPS,
            scope=call.who.scope,
        )
        try:
            plan = await self.guard.off_loop(self._starts.plan, asked, self.guard.now())
        except RolloutConflict as exc:
            raise _conflict(str(exc)) from None
        except RolloutRefused as exc:
            raise invalid(str(exc)) from None
        spec, hosts = plan.spec, plan.hosts
        if request.dry_run:
            call.done = f"dry run of {request.playbook} on {len(hosts)} hosts"
            pending = [
                HostResult(h.device_id, h.school_id, None, HostOutcome.PENDING) for h in hosts
            ]
            return rollout_to_pb(preview(plan, self.guard.now()), pending, dry_run=True)
        try:
            rollout_id = await self._engine().start(spec, hosts, call.who.name)
        except HostsClaimed as exc:
            raise _conflict(
                f"{exc}: one rollout at a time may change a host; wait for it or abort it"
            ) from None
        call.target = f"{rollout_id} {request.playbook}"[:200]
        call.done = f"rollout {rollout_id}: {request.playbook} on {len(hosts)} hosts"
        record = await self.guard.off_loop(self._rollouts.get_rollout, rollout_id)
        assert record is not None
        return await self._info(record)

    @guarded("rollouts.get", Need.READ)
    async def GetRollout(
        self, request: admin_pb2.GetRolloutRequest, call: Call
    ) -> admin_pb2.RolloutInfo:
        record = await self._rollout(call, request.rollout_id, Need.READ)
        if not request.device_id:
            return await self._info(record)
        device_id = request.device_id
        if not valid_id(device_id):
            raise invalid(f"device id {device_id[:80]!r} is not valid")
        host = await self.guard.off_loop(self._rollouts.rollout_host, record.rollout_id, device_id)
        # Another school's device answers as one the rollout does not have.
        call.allow_target(
            Need.READ,
            {host.school_id} if host is not None else None,
            f"host {device_id!r} in rollout {record.rollout_id}",
        )
        assert host is not None
        return rollout_to_pb(record, [host])

    @guarded("rollouts.list", Need.READ)
    async def ListRollouts(
        self, request: admin_pb2.ListRolloutsRequest, call: Call
    ) -> admin_pb2.ListRolloutsResponse:
        try:
            states = frozenset(RolloutState(s) for s in request.states) or None
        except ValueError:
            known = ", ".join(s.value for s in RolloutState)
            raise invalid(f"rollout states are {known}") from None
        limit = min(request.limit or 50, LIST_MAX)
        query = RolloutQuery(states=states, schools=call.who.scope, limit=limit)
        records = await self.guard.off_loop(self._rollouts.list_rollouts, query)
        return admin_pb2.ListRolloutsResponse(rollouts=[rollout_to_pb(r) for r in records])

    @guarded("rollouts.playbooks", Need.READ)
    async def ListPlaybooks(
        self, request: admin_pb2.ListPlaybooksRequest, call: Call
    ) -> admin_pb2.ListPlaybooksResponse:
        # The names only: the same list StartRollout gives with an unknown playbook.
        names = await self.guard.off_loop(playbook_names, self._playbooks_dir)
        return admin_pb2.ListPlaybooksResponse(names=names)

    @guarded("rollouts.access", Need.READ)
    async def GetAnsibleAccess(
        self, request: admin_pb2.GetAnsibleAccessRequest, call: Call
    ) -> admin_pb2.AnsibleAccess:
        settings = self._runner_settings
        if settings is None:
            raise invalid("rollouts are not set up on this controller")
        try:
            access = await self.guard.off_loop(
                ansible_access,
                self._devices,
                settings.known_hosts,
                settings.remote_user,
                settings.python_interpreter,
                call.who.scope,
                self.guard.now(),
            )
        except RolloutRefused as exc:
            raise _conflict(str(exc)) from None
        return admin_pb2.AnsibleAccess(
            ssh_user=access.ssh_user,
            python_interpreter=access.python_interpreter,
            known_hosts=access.known_hosts,
        )

    async def _switch(self, call: Call, rollout_id: int, pause: bool) -> admin_pb2.RolloutInfo:
        """Pause (the running wave finishes, no other starts) or resume."""
        record = await self._rollout(call, rollout_id, Need.CHANGE)
        want = RolloutState.RUNNING if pause else RolloutState.PAUSED
        if record.state is not want:
            raise _conflict(f"rollout {rollout_id} is {record.state.value}, not {want.value}")
        engine = self._engine()
        changed = await (engine.pause if pause else engine.resume)(rollout_id)
        assert changed is not None
        call.done = f"rollout {rollout_id} {changed.state.value}"
        return await self._info(changed)

    @guarded("rollouts.pause", Need.CHANGE, audited=True)
    async def PauseRollout(
        self, request: admin_pb2.GetRolloutRequest, call: Call
    ) -> admin_pb2.RolloutInfo:
        return await self._switch(call, request.rollout_id, pause=True)

    @guarded("rollouts.resume", Need.CHANGE, audited=True)
    async def ResumeRollout(
        self, request: admin_pb2.GetRolloutRequest, call: Call
    ) -> admin_pb2.RolloutInfo:
        return await self._switch(call, request.rollout_id, pause=False)

    @guarded("rollouts.abort", Need.CHANGE, audited=True)
    async def AbortRollout(
        self, request: admin_pb2.GetRolloutRequest, call: Call
    ) -> admin_pb2.RolloutInfo:
        record = await self._rollout(call, request.rollout_id, Need.CHANGE)
        if record.state.final:
            raise _conflict(f"rollout {record.rollout_id} is already {record.state.value}")
        aborted = await self._engine().abort(record.rollout_id, call.who.name)
        assert aborted is not None
        call.done = f"rollout {record.rollout_id} {aborted.state.value}"
        return await self._info(aborted)

    @guarded("rollouts.retry", Need.CHANGE, audited=True)
    async def RetryRollout(
        self, request: admin_pb2.GetRolloutRequest, call: Call
    ) -> admin_pb2.RolloutInfo:
        record = await self._rollout(call, request.rollout_id, Need.CHANGE)
        if not record.state.final:
            raise _conflict(
                f"rollout {record.rollout_id} is {record.state.value}: "
                "retry a finished one (abort it, or wait)"
            )
        which = sorted(set(request.retry) or {"failed"})
        unknown = [w for w in which if w not in RETRY_HOSTS]
        if unknown:
            raise invalid(f"retry {unknown[0][:40]!r}: say failed or not-reached")
        hosts, offline = await self._retry_hosts(call, record, which)
        spec = replace(
            record.spec,
            selector=f"{' and '.join(which)} hosts of rollout {record.rollout_id}",
            offline_skipped=offline,
        )
        try:
            new_id = await self._engine().start(spec, hosts, call.who.name)
        except HostsClaimed as exc:
            raise _conflict(f"{exc}: wait for it or abort it") from None
        call.done = f"rollout {new_id}: retry of {record.rollout_id} on {len(hosts)} hosts"
        new = await self.guard.off_loop(self._rollouts.get_rollout, new_id)
        assert new is not None
        return await self._info(new)

    async def _retry_hosts(
        self, call: Call, record: RolloutRecord, which: list[str]
    ) -> tuple[list[NewHost], tuple[str, ...]]:
        """The hosts a retry takes, each in its school now, and those it leaves out as
        offline (as the rollout's start did, unless it took offline devices too)."""
        rid = record.rollout_id
        outcomes = frozenset().union(*(RETRY_HOSTS[w] for w in which))
        found = await self.guard.off_loop(self._rollouts.rollout_hosts, rid, outcomes)
        ids = [h.device_id for h in found]
        if "not-reached" in which:
            ids += record.spec.offline_skipped
        words = " or ".join(which)
        if not ids:
            raise invalid(f"rollout {rid} has no {words} hosts")
        found_devices = await self.guard.off_loop(
            self._devices.devices_by_id, ids, self.guard.now()
        )
        devices = {d.identity.device_id: d for d in found_devices}
        if not devices:
            raise invalid(f"rollout {rid}: none of its {words} hosts is registered any more")
        # A device may have moved since: the caller must be allowed its school now.
        for school in sorted({d.identity.school_id for d in devices.values()}):
            call.allow(Need.CHANGE, school)
        matched = [
            (NewHost(d.identity.device_id, d.identity.school_id), d.status)
            for d in devices.values()
        ]
        hosts, offline = split_offline(matched, record.spec.include_offline)
        if not hosts:
            raise invalid(
                f"rollout {rid}: its {len(offline)} {' and '.join(which)} host(s) are all "
                "offline now; retry when they are back"
            )
        return hosts, offline

    @guarded("maintenance.set", Need.CHANGE, audited=True)
    async def SetMaintenanceWindows(
        self, request: admin_pb2.SetMaintenanceWindowsRequest, call: Call
    ) -> admin_pb2.MaintenanceWindows:
        if not valid_id(request.school_id):
            raise invalid(f"school id {request.school_id[:80]!r} is not valid")
        call.target = request.school_id
        call.allow(Need.CHANGE, request.school_id)
        if len(request.windows) > WINDOWS_MAX:
            raise invalid(f"at most {WINDOWS_MAX} windows per school")
        try:
            windows = sorted({parse_window(w).text for w in request.windows})
        except WindowError as exc:
            raise invalid(str(exc)) from None
        await self.guard.off_loop(self._rollouts.set_windows, request.school_id, windows)
        if self._running is not None:
            self._running.wake_all()
        call.done = f"windows: {'; '.join(windows) or 'none'}"
        return admin_pb2.MaintenanceWindows(school_id=request.school_id, windows=windows)

    @guarded("maintenance.list", Need.READ)
    async def ListMaintenanceWindows(
        self, request: admin_pb2.ListMaintenanceWindowsRequest, call: Call
    ) -> admin_pb2.ListMaintenanceWindowsResponse:
        if request.school_id and not valid_id(request.school_id):
            raise invalid(f"school id {request.school_id[:80]!r} is not valid")
        call.allow(Need.READ, request.school_id or None)
        scope = call.who.scope
        wanted = [request.school_id] if request.school_id else (sorted(scope) if scope else None)
        stored: Mapping[str, list[str]] = await self.guard.off_loop(self._rollouts.windows, wanted)
        return admin_pb2.ListMaintenanceWindowsResponse(
            schools=[
                admin_pb2.MaintenanceWindows(school_id=s, windows=w)
                for s, w in sorted(stored.items())
            ]
        )
