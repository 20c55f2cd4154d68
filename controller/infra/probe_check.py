"""One active probe of one access point or school server (blocking; run it in a pool).

Reachability is a TCP connect to the target's ``ssh_port``: the port its inventory
row names as its management port (22 unless it says otherwise), whether or not the
controller logs in there. A host name is resolved first, and a name that does not
resolve is its own reason.

With ``ssh_user`` set, the probe then speaks SSH on that connection and trusts only
the key ``schoolctl servers trust`` pinned: no pinned key, or a different one, and it
stops before logging in, recording the key it saw. Otherwise it logs in with the
controller's key and runs one command (controller/infra/probe_facts.py) that prints uptime,
load, memory, the root file system and, on an access point, how many clients are
associated.

``up`` means the target answers on its management port and, for an SSH target,
speaks SSH there (a target that accepts the connection and says nothing is down).
A target that is up with a reason is one whose facts are missing: key not trusted
or changed, login refused, command failed. Every step has its own timeout, and
every paramiko transport is closed whatever happens (its thread outlives it
otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import paramiko

from controller.infra.probe_facts import FACTS_SCRIPT, parse_facts
from inventory.infra import HostKey, ProbeResult, ProbeTarget, TargetKind

log = logging.getLogger(__name__)
# paramiko logs a traceback for every target that fails its handshake; the probe's
# reason says it in one line, so its transports log here, errors hidden.
_PARAMIKO_LOG = f"{__name__}.paramiko"
logging.getLogger(_PARAMIKO_LOG).setLevel(logging.CRITICAL)

# The facts command's output is a few KiB; anything past this is not ours.
_OUTPUT_MAX = 64 * 1024
# A transport's thread polls its socket every 0.1 s; it ends within this once closed.
_THREAD_EXIT = 2.0


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How probes run: each step's timeout, the controller's SSH key, and the schedule."""

    # TCP connect, per target (shared by all of a name's addresses). An address that
    # does not answer holds a probe slot this long: see `concurrency`.
    connect_timeout: float = 3.0
    # For the SSH banner, and again for the key exchange after it.
    banner_timeout: float = 10.0
    auth_timeout: float = 10.0
    # The facts command, from opening the channel to its last byte.
    command_timeout: float = 15.0
    # The controller's SSH key; None: SSH targets are checked up to their host key.
    private_key_file: Path | None = None
    # Probes running at once (threads). Down targets set the need: each holds a slot
    # for connect_timeout, so 128 slots over a 300 s interval leave room for ~12,000
    # silent addresses (a sixth of a city's access points) with time to spare.
    concurrency: int = 128
    # Every target is probed once per interval, at its own offset into it.
    interval: float = 300.0

    @property
    def deadline(self) -> float:
        """The longest one probe may take: every step's timeout. Name resolution has
        none of its own (glibc waits for each nameserver in turn): it is given as long
        as the connect."""
        steps = 2 * self.banner_timeout + self.auth_timeout + self.command_timeout
        return 2 * self.connect_timeout + steps


@dataclass(frozen=True, slots=True)
class Checked:
    """A probe's result, and how long its steps took (for the duration histogram)."""

    result: ProbeResult
    # Name resolution and TCP connect.
    tcp_seconds: float
    # From the connection to the end of SSH; None: SSH was not tried.
    ssh_seconds: float | None = None


class ProbeStopped(Exception):
    """``Checker.stop()`` cut the probe short: it has no result."""


class _Down(Exception):
    """A step found the target down; the message is the reason."""


class Checker:
    """Probes targets one at a time per thread; safe to share between threads."""

    def __init__(
        self,
        settings: ProbeSettings,
        *,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._now = now
        self._clock = clock
        self._key_lock = threading.Lock()
        self._key: paramiko.PKey | None = None
        self._key_error = ""
        # Connections of the probes running, for stop() to cut.
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        """Cuts every probe running short (its connection is shut down, so it ends within
        a tenth of a second) and refuses new ones; they raise ProbeStopped. A connect
        under way ends by its own timeout."""
        with self._live_lock:
            self._stopped = True
            live = list(self._live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def check(self, target: ProbeTarget) -> Checked:
        """Probes ``target`` once; never raises for anything the target does (only
        ProbeStopped, after ``stop()``)."""
        probed_at, start = self._now(), self._clock()

        def result(
            up: bool,
            reason: str,
            facts: Mapping[str, float] | None = None,
            seen: HostKey | None = None,
        ) -> ProbeResult:
            return ProbeResult(
                target.kind,
                target.target_id,
                up,
                reason,
                self._clock() - start,
                probed_at,
                facts=facts or {},
                seen_key=seen,
            )

        if self._stopped:
            raise ProbeStopped(target.target_id)
        try:
            sock = self._connect(target)
        except _Down as down:
            return Checked(result(False, str(down)), self._clock() - start)
        tcp_seconds = self._clock() - start
        if not target.ssh_user:
            sock.close()
            return Checked(result(True, ""), tcp_seconds)
        ssh_start = self._clock()
        with self._live_lock:
            self._live.add(sock)
            stopped = self._stopped
        try:
            if stopped:
                raise ProbeStopped(target.target_id)
            up, reason, facts, seen = self._ssh(sock, target)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # A connection cut mid-way (by the target, or by stop()) can surface from
            # any step of the session, not only the handshake.
            if self._stopped:
                raise ProbeStopped(target.target_id) from None
            up, reason, facts, seen = False, f"SSH session failed: {_describe(exc)}", {}, None
        finally:
            with self._live_lock:
                self._live.discard(sock)
            sock.close()
        if self._stopped:
            raise ProbeStopped(target.target_id)
        return Checked(
            result(up, reason, facts, seen),
            tcp_seconds,
            self._clock() - ssh_start,
        )

    def _connect(self, target: ProbeTarget) -> socket.socket:
        try:
            infos = socket.getaddrinfo(target.address, target.ssh_port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            # UnicodeError: a name Python cannot encode (an empty or 64+ character label).
            why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc.__cause__ or exc)
            name = target.address if len(target.address) <= 80 else target.address[:77] + "..."
            raise _Down(f"address does not resolve: {name} ({why})") from None
        timeout = self._settings.connect_timeout
        deadline = self._clock() + timeout
        last = ""
        for family, kind, proto, _, address in infos:
            left = deadline - self._clock()
            if left <= 0:
                break
            sock = socket.socket(family, kind, proto)
            sock.settimeout(left)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = _connect_reason(exc, timeout)
                continue
            return sock
        raise _Down(last or f"no answer to TCP connect within {timeout:g}s")

    def _ssh(
        self, sock: socket.socket, target: ProbeTarget
    ) -> tuple[bool, str, dict[str, float], HostKey | None]:
        settings = self._settings
        transport = paramiko.Transport(sock)
        try:
            transport.set_log_channel(_PARAMIKO_LOG)
            transport.banner_timeout = settings.banner_timeout
            transport.handshake_timeout = settings.banner_timeout
            transport.auth_timeout = settings.auth_timeout
            if target.pinned_key is not None:
                _prefer(transport, target.pinned_key.key_type)
            try:
                transport.start_client(timeout=2 * settings.banner_timeout)
            except paramiko.SSHException as exc:
                return False, _handshake_reason(exc, settings.banner_timeout), {}, None
            if not transport.is_active() or not transport.initial_kex_done:
                wait = 2 * settings.banner_timeout
                return False, f"SSH key exchange did not finish within {wait:g}s", {}, None
            key = transport.get_remote_server_key()
            seen = HostKey(key.get_name(), key.get_base64())
            trust = _trust_hint(target)
            if target.pinned_key is None:
                reason = f"host key not trusted yet: {seen.fingerprint()} ({trust})"
                return True, reason, {}, seen
            if seen != target.pinned_key:
                reason = (
                    f"host key changed: presented {seen.fingerprint()}, pinned "
                    f"{target.pinned_key.fingerprint()}; not logged in (if the change is "
                    f"expected: {trust})"
                )
                return True, reason, {}, seen
            up, reason, facts = self._login_and_read(transport, target)
            return up, reason, facts, None
        finally:
            transport.close()
            # close() does nothing once a failed handshake has ended the session, while
            # the transport's thread may still be on its way out: wait for it.
            if transport.is_alive():
                transport.join(_THREAD_EXIT)

    def _login_and_read(
        self, transport: paramiko.Transport, target: ProbeTarget
    ) -> tuple[bool, str, dict[str, float]]:
        key = self._private_key()
        if key is None:
            return True, self._key_error, {}
        try:
            transport.auth_publickey(target.ssh_user, key)
        except paramiko.AuthenticationException:
            return True, f"login refused for {target.ssh_user} with the controller's key", {}
        except paramiko.SSHException as exc:
            return True, f"login did not finish: {exc or 'no answer'}", {}
        try:
            output, status = self._run(transport)
        except (paramiko.SSHException, OSError) as exc:
            return True, f"facts command failed: {_describe(exc)}", {}
        facts = parse_facts(output)
        if facts:
            return True, "", facts
        first = next((line for line in output.splitlines() if line.strip()), "no output")
        return True, f"facts command gave no facts (exit {status}): {first[:200]}", {}

    def _run(self, transport: paramiko.Transport) -> tuple[str, int]:
        """The facts command's output and exit status (-1: still running at the deadline)."""
        timeout = self._settings.command_timeout
        deadline = self._clock() + timeout
        channel = transport.open_session(timeout=timeout)
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(timeout)
            # The remote `timeout` ends the command on the host too, not just our wait.
            channel.exec_command(f"timeout {math.ceil(timeout)} sh -c {shlex.quote(FACTS_SCRIPT)}")
            chunks: list[bytes] = []
            size = 0
            while size < _OUTPUT_MAX:
                left = deadline - self._clock()
                if left <= 0:
                    raise TimeoutError(f"no end of output within {timeout:g}s")
                channel.settimeout(left)
                chunk = channel.recv(32 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            ended = channel.status_event.wait(max(0.0, deadline - self._clock()))
            status = channel.exit_status if ended else -1
            return b"".join(chunks)[:_OUTPUT_MAX].decode(errors="replace"), status
        finally:
            channel.close()

    def _private_key(self) -> paramiko.PKey | None:
        """The controller's key, read once; a failure is retried at the next probe."""
        path = self._settings.private_key_file
        if path is None:
            self._key_error = "no controller SSH key configured: facts not collected"
            return None
        with self._key_lock:
            if self._key is None:
                try:
                    self._key = paramiko.PKey.from_path(path)
                except (OSError, paramiko.SSHException, ValueError) as exc:
                    error = f"cannot read the controller's SSH key {path}: {_describe(exc)}"
                    if error != self._key_error:
                        log.warning("probe key unusable file=%s error=%s", path, _describe(exc))
                    self._key_error = error
                    return None
            return self._key


def _trust_hint(target: ProbeTarget) -> str:
    if target.kind is TargetKind.SERVER:
        return f"schoolctl servers trust {target.target_id}"
    # The store can pin an access point's key, but schoolctl only has `servers trust`.
    return "schoolctl cannot trust an access point's key yet"


def _prefer(transport: paramiko.Transport, key_type: str) -> None:
    """Asks the server for the pinned key's type first (as paramiko's SSHClient does)."""
    options = transport.get_security_options()
    offered = list(options.key_types)
    wanted = key_type
    if key_type == "ssh-rsa":
        wanted = next((t for t in ("rsa-sha2-512", "rsa-sha2-256") if t in offered), key_type)
    if wanted in offered:
        options.key_types = [wanted, *(t for t in offered if t != wanted)]


def _connect_reason(exc: OSError, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"no answer to TCP connect within {timeout:g}s"
    if exc.errno == errno.EHOSTUNREACH:
        return "host unreachable"
    if exc.errno == errno.ENETUNREACH:
        return "network unreachable"
    return f"connect failed: {_describe(exc)}"


def _handshake_reason(exc: paramiko.SSHException, banner_timeout: float) -> str:
    # paramiko raises "Error reading SSH protocol banner" with the cause as context.
    cause = exc.__context__
    if "banner" in str(exc):
        if isinstance(cause, TimeoutError):
            return f"no SSH banner within {banner_timeout:g}s"
        if isinstance(cause, EOFError):
            return "connection closed before the SSH banner"
    return f"SSH negotiation failed: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
