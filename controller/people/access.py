"""Who may do what through the admin API: bearer tokens, roles and school scope.

Plain logic, decided in one place: AdminService asks ``refusal`` before it reads or
changes anything, and a refusal names the user, the action and what they lack.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.secret_hash import hash_secret, new_secret
from controller.errors import ProtocolError
from inventory.model import valid_id
from inventory.people import Role, User

PREFIX = "sfu_"
# More schools than one person looks after; keeps a token's row and checks small.
SCHOOLS_MAX = 500
VALID_MIN, VALID_MAX = 3600, 3 * 365 * 86_400


class Need(enum.Enum):
    """What a call needs of its caller."""

    READ = "read"
    CHANGE = "change"
    # Users and other city-wide settings: central-ops only.
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """The person behind a call, as their token says."""

    name: str
    role: Role
    schools: frozenset[str]

    @classmethod
    def of(cls, user: User) -> Caller:
        return cls(user.name, user.role, frozenset(user.schools))

    @property
    def scope(self) -> frozenset[str] | None:
        """The schools the caller may see; None: every school."""
        if self.role is Role.CENTRAL_OPS or not self.schools:
            return None
        return self.schools

    def __str__(self) -> str:
        return f"user {self.name} ({self.role.value})"


def mint_token() -> str:
    """A new bearer token (~256 bits); the store keeps only ``hash_token`` of it."""
    return new_secret(PREFIX)


def hash_token(token: str) -> bytes:
    """What the store keeps of a token."""
    return hash_secret(token)


def bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token in an ``authorization: Bearer TOKEN`` header, or None."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def role_refusal(caller: Caller, need: Need, action: str) -> str | None:
    """None if the caller's role allows ``action`` somewhere; otherwise why not."""
    if caller.role is Role.CENTRAL_OPS:
        return None
    if need is Need.ADMIN:
        return f"{caller} may not {action}: only central-ops may"
    if need is Need.CHANGE and caller.role is Role.VIEWER:
        return f"{caller} may not {action}: a viewer only reads"
    return None


def refusal(caller: Caller, need: Need, action: str, school_id: str | None) -> str | None:
    """None if ``caller`` may ``action``; otherwise why not, in one line.

    ``school_id`` is the school the target belongs to, or None for a request across
    schools (a read across schools is allowed and answered within the caller's scope).
    """
    why = role_refusal(caller, need, action)
    scope = caller.scope
    if why is not None or scope is None:
        return why
    if school_id is None:
        if need is Need.READ:
            return None
        return f"{caller} may not {action} across schools"
    if school_id not in scope:
        return (
            f"{caller} may not {action} in school {school_id}: "
            f"their schools are {', '.join(sorted(scope))}"
        )
    return None


def new_user(
    name: str,
    role: Role,
    schools: Sequence[str],
    valid_seconds: int,
    created_by: str,
    now: float,
) -> User:
    """A user to be created; raises ProtocolError (INVALID_ARGUMENT) naming the problem."""
    if not valid_id(name):
        raise ProtocolError(f"user name {name[:80]!r} is not valid (letters, digits, . _ -)")
    for school in schools:
        if not valid_id(school):
            raise ProtocolError(f"school id {school[:80]!r} is not valid")
    if len(schools) > SCHOOLS_MAX:
        raise ProtocolError(f"at most {SCHOOLS_MAX} schools per user, got {len(schools)}")
    if role is Role.SCHOOL_IT and not schools:
        raise ProtocolError("a school-it user needs at least one school")
    if role is Role.CENTRAL_OPS and schools:
        raise ProtocolError("a central-ops user has every school; give no schools")
    if valid_seconds and not VALID_MIN <= valid_seconds <= VALID_MAX:
        raise ProtocolError(
            f"a user's token is valid 1 hour to 3 years, got {valid_seconds} seconds"
        )
    return User(
        name=name,
        role=role,
        schools=tuple(sorted(set(schools))),
        created_at=now,
        created_by=created_by,
        expires_at=now + valid_seconds if valid_seconds else None,
    )
