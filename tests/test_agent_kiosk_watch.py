"""The kiosk check follows the real kiosk process: started, ended, started again."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from agent.system import KioskWatch


def test_the_kiosk_is_seen_while_it_runs_and_not_after(tmp_path: Path) -> None:
    # A program of its own name, so that no other process on the machine matches.
    program = tmp_path / f"sf-kiosk-{uuid.uuid4().hex[:8]}"
    shutil.copy("/bin/sleep", program)
    watch = KioskWatch(str(program))
    assert watch.running() is False
    first = subprocess.Popen([str(program), "600"])
    try:
        assert watch.running() is True
        assert watch.running() is True  # the remembered process, checked by itself
    finally:
        first.kill()
        first.wait(10)
    assert watch.running() is False
    second = subprocess.Popen([str(program), "600"])
    try:
        assert watch.running() is True
    finally:
        second.kill()
        second.wait(10)
    assert watch.running() is False


def test_no_kiosk_program_is_none() -> None:
    assert KioskWatch("").running() is None
