"""What the admin API's imports (the schedule, the inventory) share once their rows are
checked: the call's audit entry, one denied entry per school whose rows the caller may
not change, and the refused rows as messages, by line."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from controller.api.guard import Call, Guard
from inventory.people import Outcome
from inventory.row_fields import RowError
from protos.schoolfleet.v1 import admin_pb2


async def import_done(
    guard: Guard,
    call: Call,
    *,
    dry_run: bool,
    rows: int,
    counts: Mapping[str, int],
    schools: Collection[str],
    denied: Mapping[str, str],
    errors: Sequence[RowError],
) -> list[admin_pb2.RowError]:
    """Fills in the call's audit entry (``schools``: those of the rows that passed),
    audits each denied school, and returns the errors for the answer."""
    call.school_id = next(iter(schools)) if len(schools) == 1 else ""
    changed = ", ".join(f"{count} {what}" for what, count in counts.items())
    call.done = (
        f"{'checked' if dry_run else 'imported'} {rows} rows: {changed}, {len(errors)} refused"
    )
    for school_id, why in denied.items():
        # The rows for other schools were refused; each such school is an attempt.
        await guard.audit(replace(call, school_id=school_id), Outcome.DENIED, why)
    return [
        admin_pb2.RowError(line=e.line, message=e.message)
        for e in sorted(errors, key=lambda e: e.line)
    ]
