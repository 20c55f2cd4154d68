"""The install step: it says what it does and about how long, and setuptools builds the
editable install as a plain .pth entry, without its warning about folders named like
the packages (which the import-hook strategy printed at every install)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_editable_install_is_a_pth_entry_without_a_warning(tmp_path: Path) -> None:
    build = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.build_editable(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", build, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "Please be careful with folders" not in said
    assert "meta path finder" not in said
    wheel = tmp_path / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (pth,) = [n for n in names if n.endswith(".pth")]
        assert whl.read(pth).decode().strip() == str(ROOT)
    assert not any("finder" in n for n in names), names


def test_the_install_says_what_it_does_and_how_long(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", f"VENV={venv}", "install"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    said = [line for line in lines if line.startswith("echo ")]
    assert any("creating the virtual environment" in line for line in said), lines
    pip = next(i for i, line in enumerate(lines) if "pip install --quiet -e ." in line)
    assert "about 30 s the first time" in lines[pip - 1], lines
