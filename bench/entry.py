"""What every benchmark's ``main()`` does around its measurement.

Progress goes to stderr; the benchmarks that make network namespaces refuse to start
without root; a SIGTERM unwinds the measurement like an exception; the run is timed
and the machine's load average read before and after. A failure the benchmark knows
(its own exception types) is one line and exit code 1, a Ctrl-C one line and 130.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Generic, NoReturn, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Timed(Generic[T]):
    """What the measurement returned, how long it took and how busy the machine was."""

    value: T
    minutes: float
    load_before: str
    load_after: str


def load_average() -> str:
    """The machine's 1-minute load average: how much else was running."""
    return Path("/proc/loadavg").read_text().split()[0]


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # SystemExit unwinds through the measurement's finally blocks, which stop every
    # process and network namespace it started; the default action would not.
    sys.exit(143)


def measure(
    run: Callable[[], T],
    failures: tuple[type[Exception], ...],
    *,
    needs_root: bool = False,
) -> Timed[T] | int:
    """Runs ``run`` as a benchmark's main; an int is the exit code of a run that failed.

    A SIGTERM during ``run`` leaves as ``SystemExit(143)`` once its finally blocks ran.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    if needs_root and os.geteuid() != 0:
        log.error("network namespaces need root")
        return 1
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started, load_before = time.monotonic(), load_average()
    try:
        value = run()
    except failures as exc:
        log.error("benchmark failed: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; every process it started is stopped")
        return 130
    finally:
        # Only the measurement has processes to stop; a caller (a test) keeps its own.
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return Timed(value, (time.monotonic() - started) / 60, load_before, load_average())
