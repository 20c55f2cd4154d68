"""deploy/haproxy/haproxy.cfg, the balancer a city puts before its replicas: valid for
Debian's HAProxy, and naming each client to the replicas (send-proxy-v2)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from demo import balancer

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"


def test_the_shipped_configuration_is_valid() -> None:
    binary = balancer.binary()
    assert binary, "haproxy is not installed (.ci/packages.sh installs it)"
    done = subprocess.run(
        [binary, "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_replica_is_told_its_clients_address() -> None:
    text = CONFIG.read_text()
    servers = re.findall(r"^\s+server \S+ \S+$", text, re.M)
    defaults = re.findall(r"^\s+default-server (.*)$", text, re.M)
    assert len(servers) == 6 and len(defaults) == 2
    assert all("send-proxy-v2" in d and "check-send-proxy" in d for d in defaults)
