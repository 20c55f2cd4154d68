"""Errors of the controller.

SchoolFleetError (common.errors)
├── ConfigError         bad settings (common.errors)
├── StoreError          the store cannot be opened, migrated or written
└── ProtocolError       a device broke the stream's rules; the stream is closed
                        with ``code`` and the message, other streams go on
"""

from __future__ import annotations

from common.errors import ConfigError, SchoolFleetError

__all__ = ["ConfigError", "MessageTooLarge", "ProtocolError", "SchoolFleetError", "StoreError"]


class StoreError(SchoolFleetError):
    """The store failed; the message says which store and what."""


class ProtocolError(SchoolFleetError):
    """A device sent something the contract does not allow."""

    # The gRPC status name the stream is closed with.
    status = "INVALID_ARGUMENT"


class MessageTooLarge(ProtocolError):
    """A device sent a message over the size limit."""

    status = "RESOURCE_EXHAUSTED"
