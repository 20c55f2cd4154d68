"""What enrollment needs from a store: tokens (kept as hashes of their secrets), each
device's enrollment, and moving a device to another school."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from inventory.model import Enrollment, EnrollToken


@dataclass(frozen=True, slots=True)
class DeviceMove:
    """A device put in another school by central ops."""

    device_id: str
    from_school: str
    to_school: str
    # Whether it had an enrollment (a device seen only on plaintext streams has none).
    enrolled: bool


class EnrollTokenStore(Protocol):
    """Enrollment tokens, kept as hashes of their secrets."""

    def add_enroll_token(self, token: EnrollToken, token_hash: bytes) -> None:
        """Stores a new token."""

    def list_enroll_tokens(self, school_id: str | None) -> list[EnrollToken]:
        """Tokens, newest first, of one school or all."""

    def revoke_enroll_token(self, token_id: str, now: float) -> EnrollToken | None:
        """Revokes a token (again is a no-op); None if there is no such token."""

    def get_enroll_token(self, token_id: str) -> EnrollToken | None:
        """The token with this id, usable or not."""

    def find_enroll_token(self, token_hash: bytes) -> EnrollToken | None:
        """The token with this hash, usable or not."""

    def enroll(self, token_hash: bytes, enrollment: Enrollment, now: float) -> None:
        """In one transaction: takes one use of the token and records the enrollment.

        Raises EnrollRefused if the token is no longer usable at ``now``, or if the
        device is enrolled and not marked for re-enrollment, or belongs to a school
        other than the enrollment's (controller.enroll.tokens.device_refusal); then
        nothing changes.
        """

    def get_enrollment(self, device_id: str) -> Enrollment | None:
        """The device's enrollment, if it has one."""

    def allow_reenroll(self, device_id: str) -> Enrollment | None:
        """Lets the device enroll again (its next enrollment replaces this one)."""

    def decommission(self, device_id: str, now: float) -> Enrollment | None:
        """Revokes the device's certificate: it may not connect until it enrolls again.

        A device known only from its streams (enrolled before certificates) gets a
        revoked enrollment, so it is refused too. None if the device is unknown."""

    def move_device(self, device_id: str, to_school: str, now: float) -> DeviceMove | None:
        """In one transaction: puts the device in ``to_school`` and opens it to enroll
        there (its certificate names its old school, so it is refused until it does).

        What placed it in its old school goes: its room and labels, its latest full
        report and Wi-Fi association, its command results, and commands not yet
        delivered (expired at ``now``). Its heartbeat sequence and health stay, and so
        do its lesson events and rollout rows, which belong to the old school's lessons
        and rollouts. Nothing changes if it is in ``to_school`` already. None if the
        device is unknown; raises HostsClaimed if an unfinished rollout holds it."""
