"""One-use tokens of uplink transfers: what the uplink endpoint and the checks ask of
wherever tokens are kept, and what a token is.

A token is 32 URL-safe characters (192 random bits). Kept in the store
(controller/uplink/sql_tokens.py), a token issued by one controller is taken by
whichever controller sharing the store a device's fetch reaches: behind a load
balancer that need not be the one that sent the order.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Protocol

# The most one check may send (the agents' own cap too).
MAX_BYTES = 100_000_000
# What secrets.token_urlsafe(24) gives: anything else is refused before a store sees it.
_SHAPE = re.compile(r"[A-Za-z0-9_-]{32}")


class Tokens(Protocol):
    """One-use tokens for uplink transfers; safe to use from any thread, and each call
    may block (the store)."""

    def issue(self, size: int, ttl: float, label: str = "") -> str:
        """A new token for one transfer of ``size`` bytes, usable for ``ttl`` seconds;
        ``label`` names the check in log lines (the token itself is never logged)."""
        ...

    def take(self, token: str) -> tuple[int, str] | None:
        """The size and label of a usable token, which is used up; None for any other
        (unknown, used, revoked or expired)."""
        ...

    def revoke(self, token: str) -> None:
        """Forgets a token not needed any more (its check ended)."""
        ...


def new_token() -> str:
    """A fresh token."""
    return secrets.token_urlsafe(24)


def well_formed(token: str) -> bool:
    """Whether ``token`` could be one new_token made."""
    return _SHAPE.fullmatch(token) is not None


def token_hash(token: str) -> str:
    """What the store keeps of a token: a copy of the database grants no transfer. The
    token's 192 random bits need no salt nor a slow hash."""
    return hashlib.sha256(token.encode()).hexdigest()


def checked_grant(size: int, ttl: float) -> None:
    """Refuses a grant no check may make (ValueError)."""
    if not 0 < size <= MAX_BYTES:
        raise ValueError(f"an uplink transfer is 1 to {MAX_BYTES} bytes, not {size}")
    if not 0 < ttl <= 86_400:
        raise ValueError(f"an uplink token lives 0 to 86400 seconds, not {ttl}")
