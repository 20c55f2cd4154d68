"""Rollouts between our values and the admin API's messages."""

from __future__ import annotations

import json
from collections.abc import Sequence

from inventory.rollouts import HostResult, RolloutRecord, WaveRecord
from protos.mapping import timestamp
from protos.schoolfleet.v1 import admin_pb2


def wave_to_pb(w: WaveRecord) -> admin_pb2.RolloutWave:
    message = admin_pb2.RolloutWave(
        wave=w.wave, hosts=w.hosts, started_at=timestamp(w.started_at), failed=w.failed
    )
    if w.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(w.finished_at))
    return message


def host_to_pb(h: HostResult) -> admin_pb2.RolloutHost:
    return admin_pb2.RolloutHost(
        device_id=h.device_id,
        school_id=h.school_id,
        wave=h.wave or 0,
        outcome=h.outcome.value,
        task=h.task,
        message=h.message,
    )


def rollout_to_pb(
    r: RolloutRecord, hosts: Sequence[HostResult] = (), *, dry_run: bool = False
) -> admin_pb2.RolloutInfo:
    spec = r.spec
    message = admin_pb2.RolloutInfo(
        rollout_id=r.rollout_id,
        playbook=spec.playbook,
        selector=spec.selector,
        canary=str(spec.canary),
        wave_size=str(spec.wave_size),
        max_fail=spec.max_fail,
        gate_lessons=spec.gate_lessons,
        state=r.state.value,
        reason=r.reason,
        created_by=r.created_by,
        created_at=timestamp(r.created_at),
        updated_at=timestamp(r.updated_at),
        counts={o.value: n for o, n in r.counts.items()},
        waves=[wave_to_pb(w) for w in r.waves],
        hosts=[host_to_pb(h) for h in hosts],
        waiting=r.waiting,
        extra_vars_json=json.dumps(dict(spec.extra_vars), sort_keys=True),
        dry_run=dry_run,
        include_offline=spec.include_offline,
        # The names with the hosts (a rollout's detail), the count everywhere.
        offline_skipped=spec.offline_skipped if hosts else (),
        offline_skipped_count=len(spec.offline_skipped),
    )
    if r.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(r.finished_at))
    return message
