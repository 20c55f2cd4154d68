"""Secrets people and devices present (enrollment tokens, bearer tokens): how one is
made, and what a store keeps of it, its SHA-256, never the secret. A secret is ~256
random bits, so a plain hash is enough: there is nothing a slow hash would protect."""

from __future__ import annotations

import hashlib
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
# 43 of 62 letters and digits: ~256 bits.
_SECRET_CHARS = 43


def new_secret(prefix: str) -> str:
    """A new secret; the prefix says what it is for (a leaked one is recognised)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_CHARS))


def hash_secret(secret: str) -> bytes:
    """What the store keeps of a secret."""
    return hashlib.sha256(secret.encode()).digest()
