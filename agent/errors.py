"""Errors of the agent.

SchoolFleetError (common.errors)
├── ConfigError     bad settings (common.errors)
└── CollectError    a collector could not read what it reports (the kernel refused,
                    a file vanished); the message names what and why
├── EnrollUnreachable the controller could not be reached to enroll; worth
│                   trying again (a refusal is not: it is logged and left)
└── SpoolError      the spool cannot be written (a full disk, a read-only
                    directory); a corrupt spool is not an error, it is moved aside
"""

from __future__ import annotations

from common.errors import ConfigError, SchoolFleetError

__all__ = ["CollectError", "ConfigError", "EnrollUnreachable", "SchoolFleetError", "SpoolError"]


class CollectError(SchoolFleetError):
    """A figure could not be read from the system."""


class SpoolError(SchoolFleetError):
    """The spool cannot be used (a full disk, a read-only directory); not corruption."""


class EnrollUnreachable(SchoolFleetError):
    """The controller's enrollment port did not answer; the message says where and why."""
