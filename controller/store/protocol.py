"""What the controller needs from a store, one Protocol per aggregate.

Times are Unix seconds from the controller's clock and are passed in, so that the
status rule (online while the stream is up and the last heartbeat is within the
device's deadline) is evaluated at a ``now`` the caller chooses.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.store.certs_protocol import CertStore
from controller.store.infra_protocol import InfraStore
from controller.store.lessons_protocol import LessonStore
from controller.store.rollouts_protocol import RolloutStore
from controller.store.uplink_protocol import UplinkStore
from inventory.lessons import LessonEvent
from inventory.model import (
    CommandOutcome,
    Condition,
    DeviceIdentity,
    DeviceKind,
    DeviceRecord,
    DeviceReport,
    DeviceStatus,
    Enrollment,
    EnrollToken,
    Health,
    KindCount,
    SchoolReports,
)
from inventory.people import AuditEntry, AuditQuery, User
from inventory.rollouts import Selector


@dataclass(frozen=True, slots=True)
class DeviceMove:
    """A device put in another school by central ops."""

    device_id: str
    from_school: str
    to_school: str
    # Whether it had an enrollment (a device seen only on plaintext streams has none).
    enrolled: bool


@dataclass(frozen=True, slots=True)
class HeartbeatRow:
    """One heartbeat on its way to the store."""

    device_id: str
    seq: int
    received_at: float
    health: Health
    report: DeviceReport | None = None


@dataclass(frozen=True, slots=True)
class CommandResultRow:
    """What a device answered to a command, on its way to the store."""

    device_id: str
    seq: int
    received_at: float
    command_id: str
    # ok, failed or unsupported
    status: str
    message: str
    finished_at: float


@dataclass(frozen=True, slots=True)
class LessonEventRow:
    """What a panel said of a lesson, on its way to the store."""

    device_id: str
    seq: int
    received_at: float
    event: LessonEvent


# A device's messages share one sequence, so they are stored in one ordered stream.
AgentRow = HeartbeatRow | CommandResultRow | LessonEventRow


@dataclass(frozen=True, slots=True)
class StoredLessonEvent:
    """A lesson event stored for the first time (a replayed one is not), with what the
    metrics need of its lesson."""

    event: LessonEvent
    school_id: str
    starts_at: float


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """Filters for listing devices; None matches everything. Pages by device id."""

    school_id: str | None = None
    kind: DeviceKind | None = None
    status: DeviceStatus | None = None
    condition: Condition | None = None
    # Only devices of these schools (a caller's scope); None: every school.
    schools: frozenset[str] | None = None
    after_id: str = ""
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class SelectedDevice:
    """A device a rollout's selector matched, and whether it is online now."""

    device_id: str
    school_id: str
    status: DeviceStatus


class DeviceStore(Protocol):
    """Devices: who they are, whether their stream is up, their latest health."""

    def device_connected(
        self, identity: DeviceIdentity, stream_id: int, offline_after: float, now: float
    ) -> int:
        """Records that ``stream_id`` now carries the device; returns its last stored seq."""

    def device_disconnected(self, device_id: str, stream_id: int) -> None:
        """Marks the stream down, unless a newer stream has taken the device over."""

    def reset_streams(self) -> int:
        """Marks every stream down (at start-up: none survive a restart); returns how many."""

    def record_messages(self, rows: Sequence[AgentRow]) -> list[StoredLessonEvent]:
        """Stores a batch in order in one transaction; rows at or below a device's last
        seq are duplicates and change nothing. A seq that skips numbers counts the
        skipped ones as the device's gaps. Returns the lesson events stored now."""

    def command_results(self, device_id: str, limit: int) -> list[CommandOutcome]:
        """The device's latest command results, newest first."""

    def list_devices(self, query: DeviceQuery, now: float) -> list[DeviceRecord]:
        """Devices matching ``query``, ordered by id."""

    def get_device(self, device_id: str, now: float) -> DeviceRecord | None:
        """One device with its latest command results, or None."""

    def select_devices(
        self, selector: Selector, schools: frozenset[str] | None, now: float
    ) -> list[SelectedDevice]:
        """The devices ``selector`` matches within ``schools`` (None: every school), by id,
        in one query."""

    def devices_by_id(self, device_ids: Collection[str], now: float) -> list[DeviceRecord]:
        """The registry's records of these devices (unknown ids are left out), by id."""

    def fleet_counts(self, now: float, school_id: str | None = None) -> list[KindCount]:
        """Online and offline counts per school and kind."""

    def school_reports(self, now: float) -> list[SchoolReports]:
        """Per school: online devices by verdict, messages missing, spool drops."""

    def close(self) -> None:
        """Releases the store's connections."""


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


class AccessStore(Protocol):
    """People's access (a hash of each bearer token) and the audit log."""

    def add_user(self, user: User, token_hash: bytes) -> bool:
        """Stores a new user; False if an active user already has the name (a revoked
        or expired one is replaced)."""

    def find_user(self, token_hash: bytes) -> User | None:
        """The user whose token has this hash, active or not."""

    def list_users(self) -> list[User]:
        """Every user, revoked ones too, by name."""

    def revoke_user(self, name: str, now: float) -> User | None:
        """Revokes the user's token (again is a no-op); None if there is no such user."""

    def append_audit(self, entry: AuditEntry) -> None:
        """Appends an entry (its entry_id is assigned by the store)."""

    def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries matching ``query``, newest first."""


class Store(
    DeviceStore,
    EnrollTokenStore,
    CertStore,
    AccessStore,
    LessonStore,
    RolloutStore,
    UplinkStore,
    InfraStore,
    Protocol,
):
    """Everything the controller keeps; one implementation per backend."""
