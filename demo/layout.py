"""Where the demos keep their state: `make demo` in .demo/, `make demo-city` in
.demo/city/. SCHOOLFLEET_DEMO_DIR moves both, so that a test can run them beside a
person's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The virtual environment's programs: schoolfleet-controller, -agent, schoolctl.
BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("SCHOOLFLEET_DEMO_DIR") or ROOT / ".demo").absolute()
SINGLE_PIDS = STATE / "pids.json"
CITY = STATE / "city"
CITY_PIDS = CITY / "pids.json"
# The city's PostgreSQL cluster: its data, socket and log.
CITY_CLUSTER = CITY / "pg"


def shown(path: Path) -> str:
    """A path as the person who typed `make demo` in the project folder can use it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
