"""A rollout's and a host's rows as the rollouts' store keeps them and reads them back:
the spec as JSON; a host's result bounded and escaped; and a rollout's record with
its counts and waves read in one statement, so that they are of one moment on either
database (PostgreSQL gives each statement of a READ COMMITTED transaction its own
snapshot, so a second statement could see a later state)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from controller.errors import StoreError
from controller.store.sql import Row
from inventory.host_output import bounded_detail, printable, tail
from inventory.rollouts import (
    Amount,
    HostOutcome,
    HostResult,
    LessonRates,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
    WaveRecord,
    parse_amount,
)

# A host's row without its detail, which only rollout_host reads.
HOST_COLUMNS = (
    "rollout_id, device_id, school_id, wave, outcome, task, message, started_at, "
    "finished_at, rc, stdout, stderr"
)
# Each outcome's count as a column of the rollout's row: one index range each on
# rollout_hosts_by_outcome, as a GROUP BY over it would read.
_COUNTS = ", ".join(
    f"(SELECT count(*) FROM rollout_hosts AS h WHERE h.rollout_id = r.rollout_id "
    f"AND h.outcome = '{o.value}') AS n_{o.value}"
    for o in HostOutcome
)


def records_select(where: str) -> str:
    """The statement reading the rollouts that match ``where`` (on ``rollouts AS r``),
    newest first, at most ``:limit``, each with its counts and one row per wave."""
    # The LIMIT keeps the rollouts' part a table of its own, so its counts are taken
    # once per rollout, not once per wave.
    return (
        "SELECT p.*, w.wave, w.hosts AS wave_hosts, w.started_at AS wave_started_at, "
        "w.finished_at AS wave_finished_at, w.failed AS wave_failed "
        f"FROM (SELECT r.*, {_COUNTS} FROM rollouts AS r WHERE {where} "
        "ORDER BY r.created_at DESC, r.rollout_id DESC LIMIT :limit) AS p "
        "LEFT JOIN rollout_waves AS w ON w.rollout_id = p.rollout_id "
        "ORDER BY p.created_at DESC, p.rollout_id DESC, w.wave"
    )


def records(rows: Sequence[Row]) -> list[RolloutRecord]:
    """The records of ``records_select``'s rows, in their order."""
    found: dict[int, tuple[Row, list[WaveRecord]]] = {}
    for r in rows:
        _, waves = found.setdefault(r["rollout_id"], (r, []))
        if r["wave"] is not None:
            waves.append(
                WaveRecord(
                    r["wave"],
                    r["wave_hosts"],
                    r["wave_started_at"],
                    r["wave_finished_at"],
                    r["wave_failed"],
                )
            )
    return [_record(r, waves) for r, waves in found.values()]


def _record(r: Row, waves: list[WaveRecord]) -> RolloutRecord:
    return RolloutRecord(
        rollout_id=r["rollout_id"],
        spec=_spec(r),
        state=RolloutState(r["state"]),
        reason=r["reason"],
        created_by=r["created_by"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        finished_at=r["finished_at"],
        counts={o: int(r[f"n_{o.value}"]) for o in HostOutcome},
        waves=tuple(waves),
        baseline=LessonRates(r["baseline_tried"], r["baseline_failed"]),
        waiting=r["waiting"],
    )


def _amount_text(amount: Amount) -> str:
    text = str(amount)
    # str() keeps six significant digits; a percentage with more is stored whole.
    if amount.percent and float(text.removesuffix("%")) != amount.value:
        return f"{amount.value!r}%"
    return text


def spec_json(spec: RolloutSpec) -> str:
    """The spec's column: what the rollout's own columns do not hold."""
    data: dict[str, Any] = {
        "canary": _amount_text(spec.canary),
        "wave_size": _amount_text(spec.wave_size),
        "max_fail": spec.max_fail,
        "extra_vars": dict(spec.extra_vars),
        "gate_lessons": spec.gate_lessons,
        "include_offline": spec.include_offline,
        "offline_skipped": list(spec.offline_skipped),
        "strategy": spec.strategy,
    }
    try:
        # ASCII: a NUL in an extra var is the escape \u0000, which either database's
        # text holds.
        return json.dumps(data, sort_keys=True, ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"rollout extra vars cannot be stored as JSON: {exc}") from None


def _spec(row: Row) -> RolloutSpec:
    data = json.loads(row["spec"])
    return RolloutSpec(
        playbook=row["playbook"],
        selector=row["selector"],
        canary=parse_amount(data["canary"], "canary"),
        wave_size=parse_amount(data["wave_size"], "wave size"),
        max_fail=float(data["max_fail"]),
        extra_vars=data["extra_vars"],
        gate_lessons=bool(data["gate_lessons"]),
        # Absent from rollouts stored before offline devices were left out.
        include_offline=bool(data.get("include_offline", True)),
        offline_skipped=tuple(data.get("offline_skipped", ())),
        # Absent from rollouts stored before a rollout could choose: linear then.
        strategy=str(data.get("strategy", "linear")),
    )


def host(r: Row) -> HostResult:
    """A host of a rollout from its row (with or without its detail)."""
    return HostResult(
        device_id=r["device_id"],
        school_id=r["school_id"],
        wave=r["wave"],
        outcome=HostOutcome(r["outcome"]),
        task=r["task"],
        message=r["message"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        rc=r["rc"],
        stdout=r["stdout"],
        stderr=r["stderr"],
        # A sqlite3.Row's `in` looks at its values, not its column names.
        detail=r["detail"] if "detail" in r.keys() else "",  # noqa: SIM118
    )


def stored_result(r: HostResult) -> tuple[str, str, int | None, str, str, str]:
    """A result as it is stored: task, message, return code, output ends and detail,
    bounded and escaped again (a NUL included), since they come from the wave's
    worker, which runs as Ansible's user with the devices' output."""
    return (
        printable(r.task[:500]),
        printable(r.message[:1000]),
        r.rc,
        tail(r.stdout),
        tail(r.stderr),
        bounded_detail(r.detail),
    )
