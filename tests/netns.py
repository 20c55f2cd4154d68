"""Network namespaces made by a test: 198.18.0.0/15 addresses only, each deleted by its
own unique name."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


def ip(*args: str) -> str:
    """Runs `ip` and returns its output; a failure fails the test with ip's words."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def ip_json(*args: str) -> Any:
    return json.loads(ip("-j", *args))


@contextmanager
def namespace() -> Iterator[str]:
    """A fresh, uniquely named namespace with lo up; deleted afterwards, whatever happens."""
    name = f"sf-test-{uuid.uuid4().hex[:10]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)
