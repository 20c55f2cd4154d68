"""The agent's settings: the device's identity and how to reach the controller."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import SettingError
from common.settings import LOG_LEVELS, load_settings, load_settings_lenient
from inventory.model import DeviceKind, check_labels, ip_address, parse_label, valid_id

ENV_PREFIX = "SCHOOLFLEET_AGENT_"
DEFAULT_CONFIG = Path("/etc/schoolfleet/agent.toml")
# Chromium as an M OS panel's lesson kiosk: full screen, no dialogs or first-run
# pages, and its own profile so that no other Chromium takes the URL over (a second
# Chromium on one profile hands its URL to the first and exits at once).
KIOSK_ARGV = (
    "chromium",
    "--kiosk",
    "--noerrdialogs",
    "--disable-infobars",
    "--no-first-run",
    # No keyring: a desktop keyring would ask to be unlocked, over the lesson.
    "--password-store=basic",
    "--user-data-dir=/var/lib/schoolfleet/kiosk-profile",
    "{url}",
)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything the agent can be told; see docs/agent.toml.example."""

    device_id: str
    kind: DeviceKind
    school_id: str
    room_id: str = ""
    controller: str = "127.0.0.1:7443"
    # Used until the controller's Welcome says otherwise.
    heartbeat_interval: float = 30.0
    # Reconnect delays: full jitter between 0 and min(cap, initial * 2**attempt).
    backoff_initial: float = 1.0
    backoff_cap: float = 60.0
    # A stream that stayed up this long resets the backoff.
    backoff_reset_after: float = 30.0
    max_message_bytes: int = 4 * 1024 * 1024
    # Filesystem whose usage is reported as disk_percent.
    disk_path: Path = Path("/")
    # A program whose process must always run (path or name), or the device is
    # degraded; empty: none. Not the lesson browser, which runs only during lessons.
    kiosk_program: str = ""
    # What the launcher starts for a lesson, without a shell: {url} and {lesson_id}
    # in an item are replaced. Empty: this device shows no lessons (NO_PROGRAM).
    kiosk_argv: tuple[str, ...] = KIOSK_ARGV
    # Where messages wait for the controller's ack (SQLite); survives restarts.
    spool_path: Path = Path("/var/lib/schoolfleet/agent-spool.db")
    # When the spool is full the oldest heartbeats are dropped (~7 days at 30 s).
    spool_max_bytes: int = 16 * 1024 * 1024
    # The device's key and certificate, and the controller's CA certificate.
    cert_dir: Path = Path("/var/lib/schoolfleet/tls")
    # A school's enrollment token (`schoolctl enroll token create`): used once, at the
    # first start without a certificate; the key is made on the device.
    enroll_token: str = ""
    # The controller's CA certificate, installed with the agent. Set: enrollment goes
    # over TLS to `enroll_controller`, and the stream over mutual TLS once enrolled.
    ca_cert: Path = Path()
    # HOST:PORT of the controller's TLS enrollment port (its `enroll_listen`).
    enroll_controller: str = ""
    # Off: plaintext to a controller with agent_tls off, for a lab only; ca_cert is
    # then not needed, and the device is whoever its config file says.
    tls: bool = True
    # Where Ansible should reach this device, when not at the address its stream comes
    # from (behind NAT, say): an IP address; empty: the stream's.
    management_address: str = ""
    # "name=value" entries the controller keeps with the device (rollout selectors,
    # Ansible groups); rules in inventory.model.check_labels.
    labels: tuple[str, ...] = ()
    log_level: str = "info"

    def __post_init__(self) -> None:
        for key in ("device_id", "school_id"):
            if not valid_id(getattr(self, key)):
                raise SettingError(f"{key!r} {getattr(self, key)!r} is not a valid id", key)
        if self.spool_max_bytes < 64 * 1024:
            raise SettingError("'spool_max_bytes' must be at least 65536", "spool_max_bytes")
        if self.room_id and not valid_id(self.room_id):
            raise SettingError(f"'room_id' {self.room_id!r} is not a valid id", "room_id")
        if self.heartbeat_interval <= 0:
            raise SettingError("'heartbeat_interval' must be positive", "heartbeat_interval")
        if not 0 < self.backoff_initial <= self.backoff_cap:
            # Either may be the wrong one: a lenient load drops the first that was set.
            raise SettingError(
                "'backoff_initial' must be positive and at most 'backoff_cap'",
                "backoff_initial",
                "backoff_cap",
            )
        if self.kiosk_argv and (
            not self.kiosk_argv[0] or not any("{url}" in item for item in self.kiosk_argv)
        ):
            raise SettingError(
                "'kiosk_argv' must be empty or a program followed by arguments, "
                "one of them with {url}",
                "kiosk_argv",
            )
        if self.management_address:
            try:
                ip_address(self.management_address)
            except ValueError as exc:
                raise SettingError(f"'management_address' {exc}", "management_address") from None
        try:
            self.label_pairs()
        except ValueError as exc:
            raise SettingError(f"'labels' is wrong: {exc}", "labels") from None
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingError(f"'log_level' must be one of {', '.join(LOG_LEVELS)}", "log_level")

    def label_pairs(self) -> tuple[tuple[str, str], ...]:
        """The labels as (name, value), sorted; raises ValueError for a bad entry."""
        return check_labels(parse_label(entry) for entry in self.labels)


def load(path: Path, overrides: dict[str, object] | None = None) -> AgentSettings:
    """Reads the settings from ``path``, the environment and flags; any mistake raises."""
    return load_settings(
        AgentSettings,
        path=path,
        env_prefix=ENV_PREFIX,
        environ=os.environ,
        overrides=overrides,
        required_file=path != DEFAULT_CONFIG,
    )


def load_lenient(
    path: Path, overrides: dict[str, object] | None = None
) -> tuple[AgentSettings, list[str]]:
    """Like :func:`load`, but a bad value falls back to its default and is returned as a
    problem line: a typo in the file must not take the device off the fleet. A missing
    or bad identity (device_id, kind, school_id) still raises ConfigError.
    """
    return load_settings_lenient(
        AgentSettings,
        path=path,
        env_prefix=ENV_PREFIX,
        environ=os.environ,
        overrides=overrides,
        required_file=path != DEFAULT_CONFIG,
    )
