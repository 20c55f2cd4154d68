"""Moving a device to another school, inside the store's transaction: the one change
of the enrollment feature that reaches into other features' tables (the device's
registry row, its outbox, reports and results), on either database."""

from __future__ import annotations

from controller.enroll.store import DeviceMove
from controller.errors import HostsClaimed
from controller.store.sql import Dialect, Tx

# What placed the device in its old school, and goes with the move.
_SCHOOL_ROWS = ("device_reports", "device_wifi", "command_results")


def move_in(
    tx: Tx, dialect: Dialect, device_id: str, to_school: str, now: float
) -> DeviceMove | None:
    """Moves the device (EnrollTokenStore.move_device) within ``tx``. Its rows are
    locked first, enrollment then registry as every enrollment change takes them, so
    that two moves of one device on two controllers run one after the other and the
    second reads where the first put it."""
    enrolled = tx.execute(
        f"SELECT school_id FROM enrollments WHERE device_id = ?{dialect.for_update}",
        (device_id,),
    ).fetchone()
    seen = tx.execute(
        f"SELECT school_id FROM devices WHERE device_id = ?{dialect.for_update}", (device_id,)
    ).fetchone()
    if enrolled is None and seen is None:
        return None
    from_school = str((enrolled or seen)["school_id"])
    move = DeviceMove(device_id, from_school, to_school, enrolled is not None)
    if from_school == to_school:
        return move
    claimed = tx.execute(
        "SELECT rollout_id FROM rollout_claims WHERE device_id = ?", (device_id,)
    ).fetchone()
    if claimed is not None:
        raise HostsClaimed({device_id: int(claimed["rollout_id"])})
    # Its certificate names the old school: it is refused until it enrolls here.
    tx.execute(
        "UPDATE enrollments SET school_id = ?, reenroll = 1 WHERE device_id = ?",
        (to_school, device_id),
    )
    tx.execute(
        "UPDATE devices SET school_id = ?, room_id = '', labels = '{}' WHERE device_id = ?",
        (to_school, device_id),
    )
    # Commands not yet delivered expire now (none is given a later end than it had).
    tx.execute(
        "UPDATE outbox SET expires_at = ? WHERE device_id = ? AND done_at IS NULL "
        "AND expires_at > ?",
        (now, device_id, now),
    )
    for table in _SCHOOL_ROWS:
        tx.execute(f"DELETE FROM {table} WHERE device_id = ?", (device_id,))
    return move
