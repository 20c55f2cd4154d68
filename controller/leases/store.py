"""What leases need from a store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Lease:
    """``holder`` holds ``name`` until ``expires_at`` (the database's clock); ``epoch``
    grows by one with every new holder."""

    name: str
    holder: str
    epoch: int
    expires_at: float


class LeaseStore(Protocol):
    def take(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Takes the lease for ``ttl`` seconds if it is free, expired or already
        ``holder``'s (a renewal keeps the epoch); None while another holds it."""

    def release(self, lease: Lease) -> bool:
        """Gives the lease up at once if it is still this one; False if it was lost."""

    def forget_holders(self) -> int:
        """Ends every lease now (epochs kept); how many were live."""

    def current(self, name: str) -> Lease | None:
        """The lease as the store has it (expired or not); None if never taken."""
