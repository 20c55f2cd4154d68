"""The project's wheel, built offline from a copy of the tree, as the agent playbook
installs it on devices (a build writes build/ and *.egg-info next to its sources, so
never in the checkout itself)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "controller", "inventory", "protos", "cli", "common")
VERSION = "0.1.0"


def copy_tree(source: Path, version: str = VERSION) -> Path:
    """The project's packages, README and pyproject (at ``version``) in ``source``."""
    source.mkdir(exist_ok=True)
    shutil.copy2(ROOT / "README.md", source / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{VERSION}"' in pyproject
    (source / "pyproject.toml").write_text(pyproject.replace(f'"{VERSION}"', f'"{version}"', 1))
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return source


def build_wheel(source: Path, out: Path) -> Path:
    """Builds ``source``'s wheel into ``out`` (offline, no dependencies); returns
    ``out``."""
    out.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*pip, "--no-index", "--quiet", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out
