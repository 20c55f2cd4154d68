"""Rollouts and maintenance windows: the AdminService calls behind `schoolctl rollout`
and `schoolctl maintenance`."""

from __future__ import annotations

from collections.abc import Sequence

from cli.client.connection import Connection
from protos.schoolfleet.v1 import admin_pb2


class RolloutsClient:
    """Rollouts and schools' maintenance windows; answers are the controller's messages."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection

    def start(self, request: admin_pb2.StartRolloutRequest) -> admin_pb2.RolloutInfo:
        """Starts a rollout (or, with ``dry_run``, only checks it); its hosts and first wave."""
        return self._conn.call(self._conn.stub.StartRollout, request)

    def get(self, rollout_id: int, device_id: str = "") -> admin_pb2.RolloutInfo:
        """One rollout with its waves and hosts; NotFound if there is none. With
        ``device_id``: that host alone, with its whole stored result (NotFound if the
        rollout has no such host in the caller's schools)."""
        request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id, device_id=device_id)
        return self._conn.call(self._conn.stub.GetRollout, request)

    def latest(self, states: Sequence[str], limit: int) -> list[admin_pb2.RolloutInfo]:
        """Rollouts in these states (all if none), newest first, without their hosts."""
        request = admin_pb2.ListRolloutsRequest(states=states, limit=limit)
        return list(self._conn.call(self._conn.stub.ListRollouts, request).rollouts)

    def playbooks(self) -> list[str]:
        """The playbooks in the controller's folder, by file name."""
        request = admin_pb2.ListPlaybooksRequest()
        return list(self._conn.call(self._conn.stub.ListPlaybooks, request).names)

    def pause(self, rollout_id: int) -> admin_pb2.RolloutInfo:
        """The running wave finishes; no other starts until resumed."""
        return self._conn.call(
            self._conn.stub.PauseRollout, admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
        )

    def resume(self, rollout_id: int) -> admin_pb2.RolloutInfo:
        """A paused rollout goes on."""
        return self._conn.call(
            self._conn.stub.ResumeRollout, admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
        )

    def abort(self, rollout_id: int) -> admin_pb2.RolloutInfo:
        """Stops the rollout; the running wave's hosts are cancelled."""
        return self._conn.call(
            self._conn.stub.AbortRollout, admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
        )

    def retry(self, rollout_id: int, which: Sequence[str]) -> admin_pb2.RolloutInfo:
        """A new rollout to hosts of a finished one: ``which`` is "failed" (failed,
        unreachable, interrupted) and/or "not-reached" (never reached)."""
        request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id, retry=which)
        return self._conn.call(self._conn.stub.RetryRollout, request)

    def set_maintenance_windows(
        self, school_id: str, windows: Sequence[str]
    ) -> admin_pb2.MaintenanceWindows:
        """Replaces the school's windows; none: rollouts may change it any time free of
        lessons."""
        request = admin_pb2.SetMaintenanceWindowsRequest(school_id=school_id, windows=windows)
        return self._conn.call(self._conn.stub.SetMaintenanceWindows, request)

    def maintenance_windows(self, school_id: str | None) -> list[admin_pb2.MaintenanceWindows]:
        """Windows of one school, or of every school that has some."""
        request = admin_pb2.ListMaintenanceWindowsRequest(school_id=school_id or "")
        return list(self._conn.call(self._conn.stub.ListMaintenanceWindows, request).schools)
