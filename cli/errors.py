"""Errors schoolctl shows as one line with a non-zero exit.

CliError                 base; ``exit_code`` is what the process exits with
├── ControllerUnreachable   no answer from the controller (exit 3)
├── NotFound                the thing asked for does not exist (exit 4)
├── RequestRefused          the controller refused the request as invalid (exit 2)
├── DeviceUnavailable       the device is not connected, or did not answer in time (exit 5)
└── NotAllowed              no valid token, or the user's role or schools do not allow it (exit 6)
    └── NotLoggedIn         no token at all: schoolctl login has not been run (exit 6)
"""

from __future__ import annotations

from common.errors import SchoolFleetError


class CliError(SchoolFleetError):
    """A failure the user should read about, not a bug."""

    exit_code = 1


class ControllerUnreachable(CliError):
    """The controller did not answer."""

    exit_code = 3


class NotFound(CliError):
    """The device (or other thing) does not exist."""

    exit_code = 4


class RequestRefused(CliError):
    """The controller refused the request's arguments."""

    exit_code = 2


class DeviceUnavailable(CliError):
    """The device cannot be reached through the controller right now."""

    exit_code = 5


class NotAllowed(CliError):
    """The controller did not accept the token, or the user may not do this."""

    exit_code = 6


class NotLoggedIn(NotAllowed):
    """No token in the environment or the config file: the user has not logged in."""
