"""Errors shared by every SchoolFleet program.

SchoolFleetError      base of everything we raise on purpose
└── ConfigError       a settings file, variable or flag is wrong; the message
                      names the source and the key
"""


class SchoolFleetError(Exception):
    """Base of the errors SchoolFleet raises on purpose; str() is one line for a user."""


class ConfigError(SchoolFleetError):
    """A setting is missing, unknown or of the wrong type."""
