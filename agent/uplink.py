"""Measuring the school's uplink: fetch a sized payload from the controller's uplink
endpoint and time it, from sending the request to the last byte.

The host is always the one in the agent's own ``controller`` address: an order names
only a port and a path, so no command can point the device at another host. A
transfer still going at its timeout is stopped and measured by what had arrived: a
slow uplink gets a figure, not a failure.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import http.client

# The most one order may ask for (the controller's cap too), and the longest it may run.
MAX_BYTES = 100_000_000
MAX_TIMEOUT = 600
_CHUNK = 64 * 1024
# Longest one connect or read may block: a stopping agent notices within this.
_IO_TIMEOUT = 5.0
# /uplink/ and a token: letters, digits, - and _ (URL-safe base64).
_PATH = re.compile(r"/uplink/[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)
class Transfer:
    """What a fetch came to: a measurement (``error`` empty), or why there is none."""

    received: int
    seconds: float
    error: str = ""
    # Stopped at the timeout: the measurement is of what arrived by then.
    cut: bool = False


def refusal(port: int, path: str, size: int, timeout: int) -> str | None:
    """Why an order is not carried out, or None."""
    if not 0 < port < 65536:
        return f"port {port} is not a port"
    if not _PATH.fullmatch(path):
        return f"path {path[:80]!r} is not an uplink path (/uplink/TOKEN)"
    if not 0 < size <= MAX_BYTES:
        return f"{size} bytes is not 1 to {MAX_BYTES}"
    if not 0 < timeout <= MAX_TIMEOUT:
        return f"timeout {timeout}s is not 1 to {MAX_TIMEOUT}"
    return None


def url_for(controller: str, port: int, path: str) -> str:
    """The endpoint's URL on the controller's own host (HOST:PORT, [V6]:PORT)."""
    host = controller.rpartition(":")[0]
    return f"http://{host}:{port}{path}"


@dataclass
class _Count:
    received: int = 0


def _read(
    response: http.client.HTTPResponse,
    size: int,
    deadline: float,
    stop: threading.Event,
    clock: Callable[[], float],
    count: _Count,
) -> tuple[str, bool]:
    """Reads the body into ``count``; returns why it stopped short (or "") and whether
    the deadline cut it."""
    while count.received < size:
        if stop.is_set():
            return "the agent is stopping", False
        if clock() >= deadline:
            return "", True
        chunk = response.read(min(_CHUNK, size - count.received))
        if not chunk:
            return f"the controller sent {count.received} of {size} bytes", False
        count.received += len(chunk)
    return "", False


def fetch(
    url: str,
    size: int,
    timeout: float,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> Transfer:
    """Reads up to ``size`` bytes from ``url`` for at most ``timeout`` seconds."""
    # Loaded on the first measurement, not by every agent at start: urllib and its
    # http and email modules are ~2 MiB of each device's memory (docs/benchmarks.md).
    import http.client
    import urllib.error
    import urllib.request

    # Straight to the controller: a proxy from the environment would measure itself.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = clock()
    count = _Count()
    try:
        with opener.open(url, timeout=min(timeout, _IO_TIMEOUT)) as response:
            error, cut = _read(response, size, started + timeout, stop, clock, count)
    except urllib.error.HTTPError as exc:
        return Transfer(0, clock() - started, f"the controller answered {exc.code} {exc.reason}")
    except (OSError, http.client.HTTPException) as exc:
        elapsed = clock() - started
        if count.received and elapsed >= timeout:
            return Transfer(count.received, elapsed, cut=True)
        reason = getattr(exc, "reason", None) or exc
        return Transfer(count.received, elapsed, f"after {count.received} bytes: {reason}")
    return Transfer(count.received, clock() - started, error, cut)
