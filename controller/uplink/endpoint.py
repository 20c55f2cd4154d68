"""The controller's uplink endpoint: plain HTTP, ``GET /uplink/TOKEN`` sends the bytes
the token was issued for, once.

Each check gets a token (``Tokens.issue``) for a size and a lifetime; the first
request with it takes it, so a token serves one transfer, and an unknown, used or
expired token is answered 404. The size comes with the token, never from the
request: nobody can ask the controller for more than a check granted. The payload is
one random block sent again and again: never held whole in memory, and nothing on
the way can compress it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from controller.errors import ConfigError

log = logging.getLogger(__name__)

PATH_PREFIX = "/uplink/"
# The most one check may send (the agents' own cap too).
MAX_BYTES = 100_000_000
_BLOCK = 1024 * 1024
# Seconds a connection may sit without reading or writing: the request line included.
_IO_TIMEOUT = 15.0
# Connections served at once; more are closed at once (tokens bound the real work).
_CONNECTIONS_MAX = 256


@dataclass(frozen=True, slots=True)
class _Grant:
    size: int
    expires_at: float
    # For log lines: which check it is (the token itself is never logged).
    label: str


class Tokens:
    """One-use tokens for uplink transfers; safe to use from any thread."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    def issue(self, size: int, ttl: float, label: str = "") -> str:
        """A new token for one transfer of ``size`` bytes, usable for ``ttl`` seconds."""
        if not 0 < size <= MAX_BYTES:
            raise ValueError(f"an uplink transfer is 1 to {MAX_BYTES} bytes, not {size}")
        token = secrets.token_urlsafe(24)
        now = self._now()
        with self._lock:
            for old in [t for t, g in self._grants.items() if g.expires_at <= now]:
                del self._grants[old]
            self._grants[token] = _Grant(size, now + ttl, label)
        return token

    def take(self, token: str) -> tuple[int, str] | None:
        """The size and label of a usable token, which is used up; None for any other."""
        with self._lock:
            grant = self._grants.pop(token, None)
        if grant is None or grant.expires_at <= self._now():
            return None
        return grant.size, grant.label

    def revoke(self, token: str) -> None:
        """Forgets a token not needed any more (its check ended)."""
        with self._lock:
            self._grants.pop(token, None)


class _Handler(BaseHTTPRequestHandler):
    server: UplinkServer
    # One request per connection: a check is one transfer.
    protocol_version = "HTTP/1.0"
    timeout = _IO_TIMEOUT

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        token = path.removeprefix(PATH_PREFIX) if path.startswith(PATH_PREFIX) else ""
        granted = self.server.tokens.take(token) if token else None
        peer = self.client_address[0]
        if granted is None:
            log.warning("uplink request refused peer=%s reason=unknown, used or expired", peer)
            self.send_error(404, "no such uplink check (unknown, used or expired)")
            return
        size, label = granted
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        started = time.monotonic()
        sent = 0
        block = memoryview(self.server.block)
        try:
            while sent < size:
                n = min(len(block), size - sent)
                self.wfile.write(block[:n])
                sent += n
        except OSError as exc:
            log.info("uplink transfer cut %s peer=%s sent=%d reason=%s", label, peer, sent, exc)
            return
        log.info(
            "uplink transfer sent %s peer=%s bytes=%d seconds=%.3f",
            label,
            peer,
            sent,
            time.monotonic() - started,
        )

    def log_message(self, format: str, *args: Any) -> None:
        # Every outcome is logged above, with the check's ids, through logging.
        return


class UplinkServer(ThreadingHTTPServer):
    """The endpoint; ``serve_forever`` in a thread, ``shutdown`` to stop."""

    daemon_threads = True

    def __init__(self, listen: str, tokens: Tokens) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.tokens = tokens
        self.block = os.urandom(_BLOCK)
        self._slots = threading.BoundedSemaphore(_CONNECTIONS_MAX)
        try:
            super().__init__((host, int(port)), _Handler)
        except OSError as exc:
            raise ConfigError(f"uplink_listen {listen}: {exc.strerror}") from None

    def server_bind(self) -> None:
        # HTTPServer's own looks the host up in DNS (getfqdn), which may hang; the
        # name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.port

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("uplink connection refused peer=%s reason=too many", client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(listen: str, tokens: Tokens) -> tuple[UplinkServer, threading.Thread]:
    """Starts the endpoint on its own thread."""
    server = UplinkServer(listen, tokens)
    thread = threading.Thread(target=server.serve_forever, name="uplink-http", daemon=True)
    thread.start()
    return server, thread
