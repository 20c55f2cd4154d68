"""What the benchmark reads about a process: memory and CPU from /proc, and /metrics."""

from __future__ import annotations

import asyncio
import http.client
import os
import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Labels = tuple[tuple[str, str], ...]


def _proc_kib(path: str, key: str) -> int:
    with open(path, encoding="ascii") as lines:
        for line in lines:
            if line.startswith(key):
                return int(line.split()[1])
    raise ValueError(f"no {key} in {path}")


def rss_kib(pid: int) -> int:
    """Resident memory of the process (VmRSS), in KiB."""
    return _proc_kib(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages divided among the processes mapping them, KiB."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far (user + system, all threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # The command name may hold spaces; the fields after it are fixed.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time all cores have spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    return busy / _CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class Scrape:
    """One read of a /metrics page, at ``at`` (time.monotonic)."""

    at: float
    samples: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name{labels}``; 0 when the page does not have it."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Every sample ``name``, keyed by the value of ``label``."""
        return {
            dict(labels).get(label, ""): v for (n, labels), v in self.samples.items() if n == name
        }


def _get(port: int, path: str, timeout: float) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise OSError(f"GET {path} on port {port}: HTTP {response.status}")
        return body
    finally:
        conn.close()


def scrape_now(port: int, timeout: float = 10.0) -> Scrape:
    """Reads http://127.0.0.1:PORT/metrics."""
    at = time.monotonic()
    text = _get(port, "/metrics", timeout)
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(at, samples)


async def scrape(port: int) -> Scrape:
    """:func:`scrape_now` without blocking the event loop."""
    return await asyncio.to_thread(scrape_now, port)
