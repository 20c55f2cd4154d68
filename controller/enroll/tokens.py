"""Enrollment tokens: minting, hashing and the limits they must keep.

A token's secret is random, shown once, and kept only as a SHA-256 hash: a copy
of the store does not let anyone enroll a device. Its first characters name it.
"""

from __future__ import annotations

from common.secret_hash import new_secret
from controller.errors import EnrollRefused, ProtocolError
from inventory.model import EnrollToken, valid_id

PREFIX = "sfe_"
# Letters and digits only, so that the id (its first characters) is a valid id and
# the secret survives any copy and paste; 43 of them are ~256 bits.
# Characters of the secret (after the prefix) that name the token.
_ID_CHARS = 8
USES_DEFAULT, USES_MAX = 1, 10_000
VALID_DEFAULT = 7 * 86_400
VALID_MIN, VALID_MAX = 60, 365 * 86_400


def token_id(secret: str) -> str:
    """The public name of a secret."""
    return secret.removeprefix(PREFIX)[:_ID_CHARS]


def mint(school_id: str, uses: int, valid_seconds: int, now: float) -> tuple[EnrollToken, str]:
    """A new token and its secret; 0 means the default for ``uses`` and ``valid_seconds``.

    Raises ProtocolError (INVALID_ARGUMENT) naming what is out of bounds.
    """
    if not valid_id(school_id):
        raise ProtocolError(f"school id {school_id[:80]!r} is not valid")
    uses = uses or USES_DEFAULT
    valid_seconds = valid_seconds or VALID_DEFAULT
    if not 1 <= uses <= USES_MAX:
        raise ProtocolError(f"uses must be 1 to {USES_MAX}, got {uses}")
    if not VALID_MIN <= valid_seconds <= VALID_MAX:
        raise ProtocolError(f"a token is valid 1 minute to 365 days, got {valid_seconds} seconds")
    secret = new_secret(PREFIX)
    token = EnrollToken(
        token_id=token_id(secret),
        school_id=school_id,
        uses_left=uses,
        uses=0,
        expires_at=now + valid_seconds,
        created_at=now,
    )
    return token, secret


def token_refused() -> EnrollRefused:
    """The one answer for every unusable token, so that it tells an attacker nothing."""
    return EnrollRefused(
        "the enrollment token is not valid (unknown, used up, expired or revoked)",
        "PERMISSION_DENIED",
    )


def taken(device_id: str) -> EnrollRefused:
    """The one answer for a device id a token may not enroll, whatever the reason: it
    is enrolled and not open to enroll again, or it belongs to another school. A
    token's holder learns that the id is taken (it cannot be theirs) and no more: not
    which school has it, nor whether it is open."""
    return EnrollRefused(
        f"device {device_id!r} cannot enroll with this token: it is enrolled already, "
        f"or in another school. Its school's IT can let it enroll again "
        f"('schoolctl devices reenroll {device_id}'); central ops move a device between "
        "schools ('schoolctl devices move')",
        "ALREADY_EXISTS",
    )


def device_refusal(
    device_id: str,
    token_school: str,
    enrolled_school: str | None,
    open_to_reenroll: bool,
    seen_school: str | None,
) -> EnrollRefused | None:
    """None if a token of ``token_school`` may enroll ``device_id``; otherwise why not.

    ``enrolled_school`` is the school of the device's enrollment (None: it has none)
    and ``open_to_reenroll`` whether `devices reenroll` opened it; ``seen_school`` is
    the school the device's streams named, for a device that never enrolled. A token
    enrolls only its own school's devices: moving one is central ops' (MoveDevice).
    """
    if enrolled_school is not None:
        if enrolled_school != token_school or not open_to_reenroll:
            return taken(device_id)
        return None
    if seen_school is not None and seen_school != token_school:
        return taken(device_id)
    return None
