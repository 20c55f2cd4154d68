"""`make demo-stop`: stops whichever demo runs, `make demo`'s and `make demo-city`'s,
each by the pids it recorded; the city's PostgreSQL last, by the pid it wrote, once
nothing uses it. No process is ever looked for by its name.

python demo/stop.py
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (``python demo/stop.py``) the repository root is not on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo import pids
from demo.layout import CITY, CITY_CLUSTER, CITY_PIDS, SINGLE_PIDS, STATE
from demo.pg import Cluster


def stop_single() -> int:
    """Stops `make demo`'s processes; how many were running."""
    record = pids.PidFile(SINGLE_PIDS, STATE)
    alive = list(record.alive().values())
    pids.stop(alive, STATE)
    record.forget()
    return len(alive)


def stop_city() -> int:
    """Stops `make demo-city`'s processes, PostgreSQL after the replicas; how many
    were running."""
    record = pids.PidFile(CITY_PIDS, CITY)
    alive = [pid for name, pid in record.alive().items() if name != "postgres"]
    # The replicas store what they acked before they exit: the database goes last.
    pids.stop(alive, CITY)
    stopped = len(alive) + int(Cluster(CITY_CLUSTER).stop())
    record.forget()
    return stopped


def stop_all() -> list[str]:
    """Stops both demos; what to tell the person, a line each."""
    single, city = stop_single(), stop_city()
    said = []
    if single:
        said.append(f"stopped {single} demo processes")
    if city:
        said.append(f"stopped {city} processes of the city demo")
    return said or ["the demo is not running: nothing to stop"]


if __name__ == "__main__":
    for line in stop_all():
        print(line)
