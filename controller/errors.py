"""Errors of the controller.

SchoolFleetError (common.errors)
├── ConfigError         bad settings (common.errors)
├── StoreError          the store cannot be opened, migrated or written
│   └── StoreUnavailable the database cannot be reached now (a restart, a
│                       failover): the same call may succeed in a moment
├── PkiError            the controller's CA cannot be created, read or used: a
│                       file is missing, unreadable, open to others or does not
│                       match; a name, address, id or certificate request is
│                       refused; the message names the file or the value
├── EnrollRefused       an enrollment is refused: a token that is not usable, or a
│                       device already enrolled; ``status`` is the gRPC answer
├── RolloutRefused      a rollout's playbook cannot be used: a name that is not a
│                       file of the playbook folder, a missing file, not YAML, not
│                       a list of plays, or ansible-playbook's syntax check fails
├── BackupError         a backup cannot be taken or restored: the message names the
│                       file, or what in the archive does not match its manifest
├── UplinkUnavailable   a school's uplink cannot be checked now: no online device
│   │                   of it can measure, or a check of it is running elsewhere
│   └── UplinkElsewhere not by this controller: another sharing the store holds
│                       the able devices, or runs the check
└── ProtocolError       a device broke the stream's rules; the stream is closed
    │                   with ``code`` and the message, other streams go on
    └── MessageTooLarge a message over the size limit
"""

from __future__ import annotations

from collections.abc import Mapping

from common.errors import ConfigError, SchoolFleetError

__all__ = [
    "BackupError",
    "ConfigError",
    "EnrollRefused",
    "MessageTooLarge",
    "PkiError",
    "ProtocolError",
    "RolloutRefused",
    "SchoolFleetError",
    "StoreError",
    "StoreUnavailable",
    "UplinkElsewhere",
    "UplinkUnavailable",
]


class StoreError(SchoolFleetError):
    """The store failed; the message says which store and what."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now; trying the same again later may work."""


class PkiError(SchoolFleetError):
    """The certificate authority refused or failed; the message names the file or value."""


class EnrollRefused(SchoolFleetError):
    """A device may not enroll; the message says why in words a person can act on."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        # The gRPC status name the Enroll call is answered with.
        self.status = status


class RolloutRefused(SchoolFleetError):
    """A rollout cannot start as asked; the message is one line naming the playbook."""


class RolloutConflict(RolloutRefused):
    """A rollout cannot start on this controller as it is (what it lacks, what runs),
    whatever the request."""


class BackupError(SchoolFleetError):
    """A backup or restore was refused or failed; nothing was left half-done."""


class HostsClaimed(SchoolFleetError):
    """Some hosts are already in an unfinished rollout; nothing was stored."""

    def __init__(self, claims: Mapping[str, int]) -> None:
        # device id -> the rollout that holds it
        self.claims = dict(claims)
        first, rollout = sorted(self.claims.items())[0]
        more = f" and {len(self.claims) - 1} more" if len(self.claims) > 1 else ""
        super().__init__(f"{first}{more} already in rollout {rollout}")


class UplinkUnavailable(SchoolFleetError):
    """A school's uplink cannot be checked now; the message says why."""


class UplinkElsewhere(UplinkUnavailable):
    """Not by this controller: the school's able devices are connected to another one
    sharing the store, or another one's check of it is running."""


class ProtocolError(SchoolFleetError):
    """A device sent something the contract does not allow."""

    # The gRPC status name the stream is closed with.
    status = "INVALID_ARGUMENT"


class MessageTooLarge(ProtocolError):
    """A device sent a message over the size limit."""

    status = "RESOURCE_EXHAUSTED"
