"""Rollouts and maintenance windows: the AdminService calls behind `schoolctl rollout`
and `schoolctl maintenance`, answered as our own values (cli/client/rollout_values.py)."""

from __future__ import annotations

from collections.abc import Sequence

from cli.client.connection import Connection
from cli.client.rollout_values import (
    RolloutHost,
    RolloutInfo,
    RolloutRequest,
    RolloutWave,
    SchoolWindows,
)
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import seconds


def host_from_pb(h: admin_pb2.RolloutHost) -> RolloutHost:
    """Our value for a rollout's host the controller sent."""
    return RolloutHost(
        device_id=h.device_id,
        school_id=h.school_id,
        wave=h.wave,
        outcome=h.outcome,
        task=h.task,
        message=h.message,
        rc=h.rc if h.HasField("rc") else None,
        stdout_tail=h.stdout_tail,
        stderr_tail=h.stderr_tail,
        detail_json=h.detail_json,
        started_at=seconds(h.started_at) if h.HasField("started_at") else None,
        finished_at=seconds(h.finished_at) if h.HasField("finished_at") else None,
    )


def rollout_from_pb(info: admin_pb2.RolloutInfo) -> RolloutInfo:
    """Our value for a rollout the controller sent."""
    return RolloutInfo(
        rollout_id=info.rollout_id,
        playbook=info.playbook,
        selector=info.selector,
        canary=info.canary,
        wave_size=info.wave_size,
        max_fail=info.max_fail,
        gate_lessons=info.gate_lessons,
        state=info.state,
        reason=info.reason,
        waiting=info.waiting,
        created_by=info.created_by,
        created_at=seconds(info.created_at) if info.HasField("created_at") else None,
        updated_at=seconds(info.updated_at) if info.HasField("updated_at") else None,
        finished_at=seconds(info.finished_at) if info.HasField("finished_at") else None,
        counts=dict(info.counts),
        waves=tuple(
            RolloutWave(
                wave=w.wave,
                hosts=w.hosts,
                failed=w.failed,
                started_at=seconds(w.started_at) if w.HasField("started_at") else None,
                finished_at=seconds(w.finished_at) if w.HasField("finished_at") else None,
            )
            for w in info.waves
        ),
        hosts=tuple(host_from_pb(h) for h in info.hosts),
        extra_vars_json=info.extra_vars_json,
        dry_run=info.dry_run,
        include_offline=info.include_offline,
        offline_skipped=tuple(info.offline_skipped),
        offline_skipped_count=info.offline_skipped_count,
        fail_budget=info.fail_budget,
        fail_budget_used=info.fail_budget_used,
        strategy=info.strategy,
    )


def _windows(w: admin_pb2.MaintenanceWindows) -> SchoolWindows:
    return SchoolWindows(w.school_id, tuple(w.windows))


class RolloutsClient:
    """Rollouts and schools' maintenance windows, as our own values."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def start(self, r: RolloutRequest) -> RolloutInfo:
        """Starts a rollout (or, with ``dry_run``, only checks it); its hosts and first wave."""
        request = admin_pb2.StartRolloutRequest(
            playbook=r.playbook,
            selector=r.selector,
            canary=r.canary,
            wave_size=r.wave_size,
            max_fail=r.max_fail,
            extra_vars_json=r.extra_vars_json,
            gate_lessons=r.gate_lessons,
            dry_run=r.dry_run,
            include_offline=r.include_offline,
            strategy=r.strategy,
        )
        return rollout_from_pb(self._conn.call(self._conn.stub.StartRollout, request))

    def get(self, rollout_id: int, device_id: str = "") -> RolloutInfo:
        """One rollout with its waves and hosts; NotFound if there is none. With
        ``device_id``: that host alone, with its whole stored result (NotFound if the
        rollout has no such host in the caller's schools)."""
        request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id, device_id=device_id)
        return rollout_from_pb(self._conn.call(self._conn.stub.GetRollout, request))

    def latest(self, states: Sequence[str], limit: int) -> list[RolloutInfo]:
        """Rollouts in these states (all if none), newest first, without their hosts."""
        request = admin_pb2.ListRolloutsRequest(states=states, limit=limit)
        response = self._conn.call(self._conn.stub.ListRollouts, request)
        return [rollout_from_pb(info) for info in response.rollouts]

    def playbooks(self) -> list[str]:
        """The playbooks in the controller's folder, by file name."""
        request = admin_pb2.ListPlaybooksRequest()
        return list(self._conn.call(self._conn.stub.ListPlaybooks, request).names)

    def pause(self, rollout_id: int) -> RolloutInfo:
        """The running wave finishes; no other starts until resumed."""
        request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
        return rollout_from_pb(self._conn.call(self._conn.stub.PauseRollout, request))

    def resume(self, rollout_id: int) -> RolloutInfo:
        """A paused rollout goes on."""
        request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
        return rollout_from_pb(self._conn.call(self._conn.stub.ResumeRollout, request))

    def abort(self, rollout_id: int) -> RolloutInfo:
        """Stops the rollout; the running wave's hosts are cancelled."""
        request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
        return rollout_from_pb(self._conn.call(self._conn.stub.AbortRollout, request))

    def retry(self, rollout_id: int, which: Sequence[str]) -> RolloutInfo:
        """A new rollout to hosts of a finished one: ``which`` is "failed" (failed,
        unreachable, interrupted) and/or "not-reached" (never reached)."""
        request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id, retry=which)
        return rollout_from_pb(self._conn.call(self._conn.stub.RetryRollout, request))

    def set_maintenance_windows(self, school_id: str, windows: Sequence[str]) -> SchoolWindows:
        """Replaces the school's windows; none: rollouts may change it any time free of
        lessons."""
        request = admin_pb2.SetMaintenanceWindowsRequest(school_id=school_id, windows=windows)
        return _windows(self._conn.call(self._conn.stub.SetMaintenanceWindows, request))

    def maintenance_windows(self, school_id: str | None) -> list[SchoolWindows]:
        """Windows of one school, or of every school that has some."""
        request = admin_pb2.ListMaintenanceWindowsRequest(school_id=school_id or "")
        response = self._conn.call(self._conn.stub.ListMaintenanceWindows, request)
        return [_windows(w) for w in response.schools]
