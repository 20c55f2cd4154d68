"""The slices of rollout waves (controller/rollouts/slices.py) on either database.

Claims are judged by the database's clock alone, as leases are. A claim is one
statement: the first claimable slice is picked and locked with SKIP LOCKED, so
controllers claiming at once on PostgreSQL each lock a different one (SQLite's one
writer runs them one after another), and the update checks again that the slice is
still claimable. Results are stored under the wave's row lock, then the slice's, then
the hosts': the order every other transaction on a rollout takes them in
(controller/rollouts/sql_store.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.rollouts.slices import Renewal, SliceClaim
from controller.rollouts.sql_rows import stored_result
from controller.rollouts.stored_values import storable
from controller.store.sql import SqlDatabase
from inventory.rollouts import HostResult, RolloutState

_KEY = "rollout_id = :id AND wave = :wave AND slice = :slice"
_MINE = f"{_KEY} AND claimed_by = :holder AND epoch = :epoch AND finished_at IS NULL"
# A paused rollout's running wave finishes: its slices are still claimed.
_CLAIMABLE_STATES = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)


def _key(claim: SliceClaim) -> dict[str, object]:
    return {
        "id": claim.rollout_id,
        "wave": claim.wave,
        "slice": claim.slice,
        "holder": claim.holder,
        "epoch": claim.epoch,
    }


class SqlSlices:
    """A SliceStore."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db
        now = db.dialect.now_seconds
        claimable = f"finished_at IS NULL AND (claimed_by = '' OR expires_at <= {now})"
        states = ", ".join(f"'{s}'" for s in _CLAIMABLE_STATES)
        self._claim = (
            f"UPDATE rollout_slices SET claimed_by = :holder, epoch = epoch + 1, "
            f"expires_at = {now} + :ttl "
            "WHERE (rollout_id, wave, slice) = (SELECT rollout_id, wave, slice "
            f"FROM rollout_slices WHERE {claimable} AND rollout_id IN "
            f"(SELECT rollout_id FROM rollouts WHERE state IN ({states})) "
            f"ORDER BY rollout_id, wave, slice LIMIT 1{db.dialect.skip_locked}) "
            f"AND {claimable} RETURNING rollout_id, wave, slice, epoch"
        )
        self._renew = f"UPDATE rollout_slices SET expires_at = {now} + :ttl WHERE {_MINE}"
        self._release = f"UPDATE rollout_slices SET expires_at = {now} - 1 WHERE {_MINE}"
        self._live = f"claimed_by != '' AND expires_at > {now}"

    def claim_slice(self, holder: str, ttl: float) -> SliceClaim | None:
        with self._db.transaction() as tx:
            row = tx.execute(self._claim, {"holder": holder, "ttl": ttl}).fetchone()
            if row is None:
                return None
            rid, wave, n = int(row["rollout_id"]), int(row["wave"]), int(row["slice"])
            hosts = tx.execute(
                "SELECT device_id, school_id FROM rollout_hosts "
                "WHERE rollout_id = ? AND wave = ? AND slice = ? ORDER BY device_id",
                (rid, wave, n),
            ).fetchall()
        return SliceClaim(
            rid,
            wave,
            n,
            holder,
            int(row["epoch"]),
            tuple((h["device_id"], h["school_id"]) for h in hosts),
        )

    def renew_slice(self, claim: SliceClaim, ttl: float) -> Renewal:
        with self._db.transaction() as tx:
            if not tx.execute(self._renew, {**_key(claim), "ttl": ttl}).rowcount:
                return Renewal.LOST
            row = tx.execute(
                "SELECT state FROM rollouts WHERE rollout_id = ?", (claim.rollout_id,)
            ).fetchone()
        if row is None or RolloutState(row["state"]).final:
            return Renewal.ENDED
        return Renewal.HELD

    def release_slice(self, claim: SliceClaim) -> bool:
        return bool(self._db.write(self._release, _key(claim)))

    def finish_slice(self, claim: SliceClaim, results: Sequence[HostResult], now: float) -> bool:
        key = _key(claim)
        with self._db.transaction() as tx:
            tx.execute(
                "SELECT wave FROM rollout_waves WHERE rollout_id = :id AND wave = :wave"
                + self._db.dialect.for_update,
                key,
            )
            if not tx.execute(
                f"UPDATE rollout_slices SET finished_at = :now WHERE {_MINE}", {**key, "now": now}
            ).rowcount:
                return False
            # Any host of the slice, even one an abort has marked since: what the
            # playbook did to it is what it did. A device id no host can have is left
            # out rather than failing the others' results.
            tx.executemany(
                "UPDATE rollout_hosts SET outcome = ?, task = ?, message = ?, rc = ?, "
                "stdout = ?, stderr = ?, detail = ?, finished_at = ? "
                "WHERE rollout_id = ? AND device_id = ? AND wave = ? AND slice = ?",
                [
                    (
                        r.outcome.value,
                        *stored_result(r),
                        now if r.finished_at is None else r.finished_at,
                        claim.rollout_id,
                        r.device_id,
                        claim.wave,
                        claim.slice,
                    )
                    for r in results
                    if storable(r.device_id)
                ],
            )
            # A wave an abort closed meanwhile counts these hosts too.
            tx.execute(
                "UPDATE rollout_waves SET failed = (SELECT count(*) FROM rollout_hosts "
                "WHERE rollout_id = :id AND wave = :wave "
                "AND outcome IN ('failed', 'unreachable')) "
                "WHERE rollout_id = :id AND wave = :wave AND finished_at IS NOT NULL",
                key,
            )
        return True

    def unfinished_slices(self, rollout_id: int, wave: int) -> int:
        rows = self._db.read(
            "SELECT count(*) AS n FROM rollout_slices "
            "WHERE rollout_id = ? AND wave = ? AND finished_at IS NULL",
            (rollout_id, wave),
        )
        return int(rows[0]["n"])

    def running_slices(self, rollout_id: int) -> int:
        rows = self._db.read(
            "SELECT count(*) AS n FROM rollout_slices "
            f"WHERE rollout_id = ? AND finished_at IS NULL AND {self._live}",
            (rollout_id,),
        )
        return int(rows[0]["n"])

    def forget_slice_claims(self) -> int:
        now = self._db.dialect.now_seconds
        return self._db.write(
            f"UPDATE rollout_slices SET expires_at = {now} - 1 "
            f"WHERE finished_at IS NULL AND expires_at > {now}"
        )
