"""The controller's uplink endpoint: plain HTTP, ``GET /uplink/TOKEN`` sends the bytes
the token was issued for, once.

Each check gets a token (controller/uplink/tokens.py) for a size and a lifetime; the
first request with it takes it, so a token serves one transfer, and an unknown, used
or expired token is answered 404. Tokens are kept in the store, so any controller
sharing it serves a token another issued (the fetch goes where the load balancer
sends it), and a token is taken once among them all. The size comes with the token,
never from the request: nobody can ask the controller for more than a check granted.
The payload is one random block sent again and again: never held whole in memory,
and nothing on the way can compress it.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from controller.errors import ConfigError, StoreError
from controller.uplink.tokens import Tokens

# Tokens too: what the endpoint serves is part of its interface.
__all__ = ["PATH_PREFIX", "Tokens", "UplinkServer", "serve"]

log = logging.getLogger(__name__)

PATH_PREFIX = "/uplink/"
_BLOCK = 1024 * 1024
# Seconds a connection may sit without reading or writing: the request line included.
_IO_TIMEOUT = 15.0
# Connections served at once; more are closed at once (tokens bound the real work).
_CONNECTIONS_MAX = 256
# Tokens asked of the store at once. Its connections are shared with ingest: a flood of
# well-formed but unknown tokens must not hold them all, while a check's take is one
# short statement. A request that waits for its turn as long as a connection may sit
# idle is answered 503.
_TAKES_AT_ONCE = 4


class _Handler(BaseHTTPRequestHandler):
    server: UplinkServer
    # One request per connection: a check is one transfer.
    protocol_version = "HTTP/1.0"
    timeout = _IO_TIMEOUT

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        token = path.removeprefix(PATH_PREFIX) if path.startswith(PATH_PREFIX) else ""
        peer = self.client_address[0]
        try:
            granted = self.server.take(token) if token else None
        except StoreError as exc:
            log.warning("uplink request refused peer=%s reason=%s", peer, exc)
            self.send_error(503, "the controller's store is unavailable: no uplink check now")
            return
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
        self._takes = threading.BoundedSemaphore(_TAKES_AT_ONCE)
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

    def take(self, token: str) -> tuple[int, str] | None:
        """Takes ``token`` from the store, a few requests at a time (StoreError if its
        turn does not come within a connection's idle time)."""
        if not self._takes.acquire(timeout=_IO_TIMEOUT):
            raise StoreError(
                f"{_TAKES_AT_ONCE} uplink tokens already waiting on the store for over "
                f"{_IO_TIMEOUT:g}s"
            )
        try:
            return self.tokens.take(token)
        finally:
            self._takes.release()

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
