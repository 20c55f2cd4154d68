"""Rollouts between our values and the admin API's messages."""

from __future__ import annotations

import json
from collections.abc import Sequence

from inventory.rollout_verdict import fail_budget
from inventory.rollouts import HostResult, RolloutRecord, WaveRecord
from protos.schoolfleet.v1 import admin_pb2
from wire.mapping import timestamp


def wave_to_pb(w: WaveRecord) -> admin_pb2.RolloutWave:
    message = admin_pb2.RolloutWave(
        wave=w.wave, hosts=w.hosts, started_at=timestamp(w.started_at), failed=w.failed
    )
    if w.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(w.finished_at))
    return message


# GetRollout carries the output ends of this many failing hosts (2 x 2 KiB each), so
# that a rollout with thousands of failures still fits one answer; --host has any.
OUTPUT_HOSTS_MAX = 100


def host_to_pb(h: HostResult, *, output: bool = True) -> admin_pb2.RolloutHost:
    """One host; ``output``: with its output ends. Its detail is sent when it has
    one (rollout_hosts leaves it out; only rollout_host reads it)."""
    message = admin_pb2.RolloutHost(
        device_id=h.device_id,
        school_id=h.school_id,
        wave=h.wave or 0,
        outcome=h.outcome.value,
        task=h.task,
        message=h.message,
        detail_json=h.detail,
    )
    if h.rc is not None:
        message.rc = h.rc
    if output:
        message.stdout_tail = h.stdout
        message.stderr_tail = h.stderr
    if h.started_at is not None:
        message.started_at.CopyFrom(timestamp(h.started_at))
    if h.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(h.finished_at))
    return message


def _hosts_to_pb(hosts: Sequence[HostResult]) -> list[admin_pb2.RolloutHost]:
    shown, found = 0, []
    for h in hosts:
        output = bool(h.stdout or h.stderr) and shown < OUTPUT_HOSTS_MAX
        shown += output
        found.append(host_to_pb(h, output=output))
    return found


def rollout_to_pb(
    r: RolloutRecord, hosts: Sequence[HostResult] = (), *, dry_run: bool = False
) -> admin_pb2.RolloutInfo:
    spec = r.spec
    budget = fail_budget(spec.max_fail, r.counts)
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
        hosts=_hosts_to_pb(hosts),
        waiting=r.waiting,
        extra_vars_json=json.dumps(dict(spec.extra_vars), sort_keys=True),
        dry_run=dry_run,
        include_offline=spec.include_offline,
        # The names with the hosts (a rollout's detail), the count everywhere.
        offline_skipped=spec.offline_skipped if hosts else (),
        offline_skipped_count=len(spec.offline_skipped),
        strategy=spec.strategy,
        fail_budget=budget.allowed,
        fail_budget_used=budget.used,
    )
    if r.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(r.finished_at))
    return message
