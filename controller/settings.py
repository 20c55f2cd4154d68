"""The controller's settings: one frozen object, read in one place."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.errors import SettingError
from common.settings import LOG_LEVELS, load_settings
from inventory.rollouts import STRATEGIES

ENV_PREFIX = "SCHOOLFLEET_CONTROLLER_"
DEFAULT_CONFIG = Path("/etc/schoolfleet/controller.toml")


def _split_hostport(value: str, key: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingError(f"{key!r} must be HOST:PORT, got {value!r}", key)


def _check_zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        raise SettingError(
            f"'timezone' {name!r} is not a time zone name like Europe/Moscow", "timezone"
        ) from None


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """Everything the controller can be told; see docs/controller.toml.example."""

    # gRPC address for agents and schoolctl; port 0 picks a free port.
    listen: str = "127.0.0.1:7443"
    # Prometheus /metrics; port 0 picks a free port.
    metrics_listen: str = "127.0.0.1:7444"
    database: str = "sqlite:///var/lib/schoolfleet/controller.db"
    # PostgreSQL: the most connections this controller's pool holds (it listens on one
    # more). Every replica's count, plus operators', must fit the server's
    # max_connections (docs/scale.md).
    database_connections: int = 8
    # Told to agents in Welcome.
    heartbeat_interval: int = 30
    # Missed heartbeats before a device with a live stream counts as offline.
    missed_heartbeats: int = 3
    # How long the writer waits to gather a batch, and its largest batch.
    flush_interval: float = 0.05
    batch_max: int = 5000
    # A device is acked at most once per this many seconds; each ack covers all
    # heartbeats stored so far, so nothing is lost by waiting.
    ack_interval: float = 1.0
    # Heartbeats waiting for the writer before streams are slowed down.
    queue_max: int = 100_000
    # Longest time between two heartbeats that carry a device's full system and
    # network reports (told in Welcome; a change is sent at once); 0: every heartbeat.
    full_report_interval: int = 300
    # Limits told to agents in Welcome (see agent/status.py for how they are used).
    disk_degraded_percent: float = 90.0
    disk_critical_percent: float = 98.0
    memory_degraded_percent: float = 95.0
    temperature_degraded_celsius: float = 85.0
    temperature_critical_celsius: float = 95.0
    battery_degraded_percent: float = 10.0
    # A new stream must send Hello within this many seconds.
    hello_timeout: float = 10.0
    max_message_bytes: int = 64 * 1024
    max_streams: int = 20_000
    # Seconds that open streams get on shutdown to end with the controller's word (the
    # restart and when to come back: ~0.4 ms a stream here); streams still open then are
    # cut as the process exits, and their devices come back over the spread their
    # Welcome named.
    shutdown_grace: float = 0.5
    # Agents connect with mutual TLS: the CA in DATA_DIR/pki signed their certificates,
    # and a device is who its certificate says. Off: plaintext and no certificates, for
    # a lab on one machine only (anyone who can reach the port can claim any device).
    agent_tls: bool = True
    # With agent_tls: TLS without client certificates, for enrollment and schoolctl.
    enroll_listen: str = "127.0.0.1:7445"
    # Load balancers in front (addresses or networks) that put a PROXY protocol v2
    # header before each connection (HAProxy's send-proxy-v2). Set: the controller's
    # own front takes `listen` and `enroll_listen` and reads each client's address from
    # the header (refusal budgets, the audit log, a device's address for Ansible);
    # connections from elsewhere are taken as they come; a balancer's connection
    # without a valid header is closed. Empty: no balancer, or one that hides clients.
    proxy_from: tuple[str, ...] = ()
    # Refused sign-ins (bearer tokens) and enrollments one source address may make:
    # this many at once, then this many a minute; beyond, RESOURCE_EXHAUSTED.
    refused_burst: int = 20
    refused_per_minute: int = 10
    # The controller's own files; its CA is in DATA_DIR/pki (`schoolfleet-controller init`).
    data_dir: Path = Path("/var/lib/schoolfleet")
    # Seconds a device certificate is valid; agents renew two thirds of the way in.
    device_cert_lifetime: float = 825 * 86_400.0
    # How often the running controller looks for CA and server-certificate changes
    # made by `schoolfleet-controller ca ...` (and then tells its agents).
    ca_watch_interval: float = 10.0
    # After `ca add-next`, devices renew onto the new CA at moments spread over this
    # many seconds (each device its own moment), not all at once.
    ca_rotation_spread: float = 86_400.0
    # Hosts lesson content may come from (told to agents in Welcome; a subdomain of one
    # counts too): panels refuse any other URL, and a schedule row may use http only
    # for these. Empty: panels refuse every lesson, so set it.
    content_hosts: tuple[str, ...] = ()
    # Controllers sharing a PostgreSQL store: the work that must run once (the lesson
    # dispatcher, probes, the store's gauges) is held by one of them under a lease of
    # this many seconds; when the holder dies another takes it within this and a fifth.
    lease_seconds: float = 10.0
    # Seconds before a lesson's start that its panels are told to launch it.
    lesson_lead: float = 60.0
    # A panel that launched within this many seconds of the start was on time.
    lesson_on_time: float = 60.0
    # Seconds after a lesson's end that its outcome is decided (answers still in spools).
    lesson_settle: float = 120.0
    # The schools' time zone (IANA name): what "today" means for lessons.
    timezone: str = "UTC"
    # Rollouts: the playbooks `schoolctl rollout start` may name (files in this folder).
    playbooks_dir: Path = Path("/etc/schoolfleet/playbooks")
    # How Ansible logs in to devices: this user, with this key (default
    # DATA_DIR/ssh/id_ed25519), checking host keys against this file (default
    # DATA_DIR/ssh/known_hosts; a host whose key is not there is unreachable).
    rollout_ssh_user: str = "root"
    # The devices' Python; "auto_silent": Ansible finds it on each host (a command more).
    rollout_python: str = "/usr/bin/python3"
    rollout_ssh_key: Path = Path()
    rollout_known_hosts: Path = Path()
    # The OS user Ansible runs as (controller/rollouts/os_user.py): it cannot read data_dir.
    # "": the controller's own user, UNSAFE, for a lab only.
    rollout_os_user: str = "schoolfleet-ansible"
    # Where Ansible writes each wave's files; default: `rollouts` in rollout_os_user's
    # home. Outside data_dir, whenever rollout_os_user is set.
    rollout_work_dir: Path = Path()
    # Hosts Ansible changes at once; 0: sized to this machine's cores.
    rollout_forks: int = 0
    # A wave is cut into slices of at most this many hosts; each controller sharing
    # the store claims slices and runs them (controller/rollouts/slices.py), so a
    # wave runs on every controller's cores.
    rollout_slice_hosts: int = 20
    # Slices this controller runs at once at most: its first whatever the load, more
    # only while a core is spare. 0: half this machine's cores, at least 1.
    rollout_slots: int = 0
    # Ansible's strategy for rollouts that do not choose one (`rollout start
    # --strategy`): "mitogen" (Mitogen for Ansible, the mitogen package: one Python per
    # host for all its tasks; docs/benchmarks.md has what it gains) or "linear"
    # (Ansible's own).
    rollout_strategy: str = "mitogen"
    # A slice of a wave still running after this many seconds is stopped; its hosts fail.
    rollout_wave_timeout: float = 3600.0
    # How long a batch of `forks` hosts is expected to take before a wave has been
    # measured: a wave takes only hosts free of lessons for its expected duration.
    rollout_batch_estimate: float = 300.0
    # How often a rollout whose hosts all wait (lessons, windows) looks again.
    rollout_recheck: float = 60.0
    # --gate lessons compares with lessons on the same devices over this many days.
    rollout_gate_days: float = 7.0
    # Uplink checks: plain HTTP that devices fetch a sized payload from, on the host
    # they reach the controller at (the host of their `controller`), so it must listen
    # where `listen` does; port 0 picks a free port.
    uplink_listen: str = "127.0.0.1:7446"
    # Seconds between two checks of a school (each has its slot in the interval); 0:
    # checks only by hand (`schoolctl uplink check`).
    uplink_interval: float = 21_600.0
    # Checks running at once, city-wide (each sends a payload from this controller).
    uplink_concurrency: int = 20
    # Bytes one check fetches (at most 100,000,000), and the seconds it may take: a
    # slower transfer is measured by what arrived by then.
    uplink_bytes: int = 25_000_000
    uplink_timeout: float = 60.0
    # The uplink a school should have: `schoolctl status` lists schools under it.
    uplink_target_mbps: float = 100.0
    # Probes of access points and servers (docs/controller.toml.example): each target
    # once per interval, at its own offset into it; 0: no probes.
    probe_interval: float = 300.0
    # Probes running at once; an address that does not answer holds one for
    # probe_connect_timeout.
    probe_concurrency: int = 128
    probe_connect_timeout: float = 3.0
    # For the SSH banner, and again for the key exchange after it.
    probe_banner_timeout: float = 10.0
    probe_auth_timeout: float = 10.0
    # The facts command, from opening the channel to its last byte.
    probe_command_timeout: float = 15.0
    # Where `listen` with port 0 writes the ports it got (for tests and the demo).
    ports_file: Path = Path()
    log_level: str = "info"

    def __post_init__(self) -> None:
        _split_hostport(self.listen, "listen")
        _split_hostport(self.metrics_listen, "metrics_listen")
        _split_hostport(self.enroll_listen, "enroll_listen")
        _split_hostport(self.uplink_listen, "uplink_listen")
        # The PostgreSQL schemes libpq's URLs take (controller/stores.py).
        if not self.database.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise SettingError(
                "'database' must be sqlite:///ABSOLUTE/PATH, sqlite:RELATIVE/PATH or "
                f"postgresql://..., got {self.database!r}",
                "database",
            )
        _check_zone(self.timezone)
        for value in self.proxy_from:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise SettingError(
                    f"'proxy_from': {value[:80]!r} is not an address or a network", "proxy_from"
                ) from None
        self._check_ranges()
        if self.rollout_strategy not in STRATEGIES:
            raise SettingError(
                f"'rollout_strategy' must be mitogen or linear, got {self.rollout_strategy!r}",
                "rollout_strategy",
            )
        if (
            self.rollout_os_user
            and self.rollout_work_dir != Path()
            and self.rollout_work_dir.absolute().is_relative_to(self.data_dir.absolute())
        ):
            raise SettingError(
                f"'rollout_work_dir' {self.rollout_work_dir} is inside data_dir: Ansible's"
                " user must not reach the controller's data; choose a folder outside it",
                "rollout_work_dir",
            )
        # The agents' own limits (agent/uplink.py): an order beyond them is refused.
        if not 0 < self.uplink_bytes <= 100_000_000:
            raise SettingError("'uplink_bytes' must be 1 to 100000000", "uplink_bytes")
        if self.uplink_timeout > 600:
            raise SettingError("'uplink_timeout' must be at most 600 seconds", "uplink_timeout")
        if not 4 <= self.database_connections <= 100:
            raise SettingError(
                "'database_connections' must be 4 to 100 (the store's threads share them)",
                "database_connections",
            )
        if self.lease_seconds < 1:
            raise SettingError("'lease_seconds' must be at least 1", "lease_seconds")

    def _check_ranges(self) -> None:
        for key in (
            "heartbeat_interval",
            "missed_heartbeats",
            "batch_max",
            "queue_max",
            "uplink_concurrency",
            "probe_concurrency",
            "refused_burst",
            "refused_per_minute",
            "rollout_slice_hosts",
        ):
            if getattr(self, key) < 1:
                raise SettingError(f"{key!r} must be at least 1", key)
        for key in (
            "flush_interval",
            "ack_interval",
            "shutdown_grace",
            "full_report_interval",
            "lesson_lead",
            "lesson_on_time",
            "lesson_settle",
            "rollout_forks",
            "rollout_slots",
            "rollout_recheck",
            "rollout_gate_days",
            "uplink_interval",
            "probe_interval",
            "ca_rotation_spread",
        ):
            if getattr(self, key) < 0:
                raise SettingError(f"{key!r} must be >= 0", key)
        for key in (
            "hello_timeout",
            "rollout_wave_timeout",
            "rollout_batch_estimate",
            "uplink_timeout",
            "uplink_target_mbps",
            "probe_connect_timeout",
            "probe_banner_timeout",
            "probe_auth_timeout",
            "probe_command_timeout",
            "device_cert_lifetime",
            "ca_watch_interval",
        ):
            if getattr(self, key) <= 0:
                raise SettingError(f"{key!r} must be positive", key)
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingError(f"'log_level' must be one of {', '.join(LOG_LEVELS)}", "log_level")
        if self.max_message_bytes < 1024:
            raise SettingError("'max_message_bytes' must be at least 1024", "max_message_bytes")
        for key in (
            "disk_degraded_percent",
            "disk_critical_percent",
            "memory_degraded_percent",
            "battery_degraded_percent",
        ):
            if not 0 < getattr(self, key) <= 100:
                raise SettingError(f"{key!r} must be above 0 and at most 100", key)
        for low, high in (
            ("disk_degraded_percent", "disk_critical_percent"),
            ("temperature_degraded_celsius", "temperature_critical_celsius"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise SettingError(f"{low!r} must not be above {high!r}", low)

    @property
    def ssh_key(self) -> Path:
        return (
            self.rollout_ssh_key
            if self.rollout_ssh_key != Path()
            else self.data_dir / "ssh" / "id_ed25519"
        )

    @property
    def known_hosts(self) -> Path:
        if self.rollout_known_hosts != Path():
            return self.rollout_known_hosts
        return self.data_dir / "ssh" / "known_hosts"

    @property
    def offline_after(self) -> int:
        """Seconds without a heartbeat after which a device is offline."""
        return self.heartbeat_interval * self.missed_heartbeats


def load(path: Path | None, overrides: dict[str, object] | None = None) -> ControllerSettings:
    """Reads the settings from ``path`` (optional), the environment and flags."""
    return load_settings(
        ControllerSettings,
        path=path,
        env_prefix=ENV_PREFIX,
        environ=os.environ,
        overrides=overrides,
        required_file=path is not None and path != DEFAULT_CONFIG,
    )
