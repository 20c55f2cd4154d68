"""Errors of the agent.

SchoolFleetError (common.errors)
├── ConfigError     bad settings (common.errors)
└── CollectError    a collector could not read what it reports (netlink refused,
                    a file vanished); the message names what and why
"""

from __future__ import annotations

from common.errors import ConfigError, SchoolFleetError

__all__ = ["CollectError", "ConfigError", "SchoolFleetError"]


class CollectError(SchoolFleetError):
    """A figure could not be read from the system."""
