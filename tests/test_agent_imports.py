"""What the running agent loads: every device pays for each module in memory, so the
rare paths (Wi-Fi, an uplink measurement) load theirs when they are taken."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version

from tests.procs import BIN

# A fresh interpreter, as the daemon starts: its modules, then one report collected.
_DAEMON = """
import json, sys
from agent.main import _parser, _version
_parser()
from agent.link import Link
from agent.report import Reporter
from agent.settings import AgentSettings
from inventory.model import DeviceKind
report = Reporter(AgentSettings("p1", DeviceKind.PANEL, "s1")).collect()
print(json.dumps({
    "version": _version(),
    "wireless": any(i.wireless for i in report.network.interfaces),
    "modules": sorted(sys.modules),
}))
"""
# Loaded by the libraries the agent cannot do without, or by nothing it does often.
_RARE = ("pyroute2", "urllib.request", "http.client", "email", "importlib.metadata", "zipfile")


def test_the_daemon_loads_no_module_it_needs_only_rarely() -> None:
    done = subprocess.run(
        [str(BIN / "python"), "-c", _DAEMON], capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(done.stdout)
    loaded = [m for m in got["modules"] if m.startswith(_RARE)]
    if got["wireless"]:
        loaded = [m for m in loaded if not m.startswith("pyroute2")]
    assert loaded == []
    # The version read without importlib.metadata is the one it would give.
    assert got["version"] == version("schoolfleet")


def test_version_is_the_installed_one() -> None:
    done = subprocess.run(
        [str(BIN / "schoolfleet-agent"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == f"schoolfleet-agent {version('schoolfleet')}"
