"""Errors shared by every SchoolFleet program.

SchoolFleetError      base of everything we raise on purpose
└── ConfigError       a settings file, variable or flag is wrong; the message
                      names the source and the key

SettingError          (a ValueError) a settings dataclass's own check refused a
                      value; it names the key, and the loader turns it into a
                      ConfigError or, when lenient, falls back to the default
"""


class SchoolFleetError(Exception):
    """Base of the errors SchoolFleet raises on purpose; str() is one line for a user."""


class ConfigError(SchoolFleetError):
    """A setting is missing, unknown or of the wrong type."""


class SettingError(ValueError):
    """A settings value failed its dataclass's validation.

    ``key`` is the field to blame first; ``keys`` adds the others a rule involves
    (``backoff_initial`` is checked against ``backoff_cap``), so a lenient loader can
    fall back to the default of whichever of them was actually set.
    """

    def __init__(self, message: str, key: str, *others: str) -> None:
        super().__init__(message)
        self.key = key
        self.keys = (key, *others)
