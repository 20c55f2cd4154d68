"""Basic health of the device, read with psutil."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from inventory.model import Health


class HealthCollector:
    """Collects a Health sample; the first CPU figure is primed at creation."""

    def __init__(self, disk_path: Path) -> None:
        self._disk_path = str(disk_path)
        # psutil's cpu_percent(None) measures since the previous call: prime it.
        psutil.cpu_percent(interval=None)

    def collect(self) -> Health:
        """One sample, without blocking."""
        now = time.time()
        load1, load5, load15 = os.getloadavg()
        return Health(
            collected_at=now,
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_percent=psutil.virtual_memory().percent,
            disk_percent=psutil.disk_usage(self._disk_path).percent,
            uptime_seconds=max(0.0, now - psutil.boot_time()),
            load1=load1,
            load5=load5,
            load15=load15,
        )
