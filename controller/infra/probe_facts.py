"""What a probe reads over SSH: the facts command, and the pure parsing of its output
(uptime, load, memory, root file system, associated Wi-Fi clients). No I/O."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

# Sections start with "@@ NAME". stderr is dropped so that a missing tool is only a
# missing section. Stations: one "INTERFACE COUNT" line per interface in AP mode.
FACTS_SCRIPT = r"""exec 2>/dev/null
echo '@@ uptime'; cat /proc/uptime
echo '@@ loadavg'; cat /proc/loadavg
echo '@@ meminfo'; cat /proc/meminfo
echo '@@ df'; df -P /
if command -v iw >/dev/null; then
  echo '@@ stations'
  for i in $(iw dev | awk '$1 == "Interface" {i = $2} $1 == "type" && $2 == "AP" {print i}')
  do echo "$i $(iw dev "$i" station dump | grep -c '^Station')"; done
elif command -v iwinfo >/dev/null; then
  echo '@@ stations'
  for i in $(ls /sys/class/net); do
    case "$(iwinfo "$i" info)" in *"Mode: Master"*)
      echo "$i $(iwinfo "$i" assoclist | grep -cE '^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}')";;
    esac
  done
fi
"""


def parse_facts(output: str) -> dict[str, float]:
    """The facts in the facts command's output; a missing or garbled part is left out."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@@ "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    facts: dict[str, float] = {}
    readers: tuple[tuple[str, Callable[[list[str]], Mapping[str, float]]], ...] = (
        ("uptime", _uptime),
        ("loadavg", _loadavg),
        ("meminfo", _memory),
        ("df", _disk),
        ("stations", _clients),
    )
    for name, reader in readers:
        if name in sections:
            facts.update(reader(sections[name]))
    return facts


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _uptime(lines: list[str]) -> dict[str, float]:
    words = " ".join(lines).split()
    value = _number(words[0]) if words else None
    return {} if value is None else {"uptime_seconds": value}


def _loadavg(lines: list[str]) -> dict[str, float]:
    words = " ".join(lines).split()[:3]
    values = [v for w in words if (v := _number(w)) is not None]
    if len(values) < 3:
        return {}
    return dict(zip(("load1", "load5", "load15"), values, strict=True))


def _memory(lines: list[str]) -> dict[str, float]:
    kib: dict[str, float] = {}
    for line in lines:
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and (value := _number(words[0])) is not None:
            kib[name.strip()] = value
    total = kib.get("MemTotal")
    available = kib.get("MemAvailable")
    if available is None and "MemFree" in kib:
        # Kernels before 3.14 have no MemAvailable (some access points still run them).
        available = kib["MemFree"] + kib.get("Buffers", 0.0) + kib.get("Cached", 0.0)
    if not total or available is None:
        return {}
    return {"memory_percent": min(100.0, max(0.0, 100 * (total - available) / total))}


def _disk(lines: list[str]) -> dict[str, float]:
    # "Filesystem 1024-blocks Used Available Capacity Mounted on": read from the right,
    # since a file system's name may hold spaces.
    for line in lines[1:]:
        words = line.split()
        if len(words) < 6 or words[-1] != "/":
            continue
        used, free = _number(words[-4]), _number(words[-3])
        if used is None or free is None:
            continue
        if used + free == 0:
            return {}
        return {"disk_percent": 100 * used / (used + free)}
    return {}


def _clients(lines: list[str]) -> dict[str, float]:
    counts = []
    for line in lines:
        words = line.split()
        if len(words) == 2 and (value := _number(words[1])) is not None:
            counts.append(value)
    # No interface in AP mode: not an access point, so no client count at all.
    return {"clients": sum(counts)} if counts else {}
