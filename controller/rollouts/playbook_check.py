"""Checks a playbook before a rollout may use it: a file in the controller's playbook
folder, YAML that is a list of plays, and `ansible-playbook --syntax-check` passing."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from controller.errors import RolloutRefused
from controller.rollouts.events import first_error_in, one_line
from controller.rollouts.runner import RunnerSettings, ansible_env

PLAYBOOK_SUFFIXES = (".yml", ".yaml")
_SYNTAX_CHECK_TIMEOUT = 120


def check_playbook(playbooks_dir: Path, name: str, settings: RunnerSettings) -> Path:
    """The absolute path of playbook ``name`` in ``playbooks_dir``, once it reads as a
    list of plays and passes ``ansible-playbook --syntax-check``; else RolloutRefused."""
    path = playbook_path(playbooks_dir, name)
    check_syntax(path, name, settings)
    return path


def playbook_path(playbooks_dir: Path, name: str) -> Path:
    """The absolute path of playbook ``name`` in ``playbooks_dir``, once it reads as a
    list of plays; else RolloutRefused. Cheap: the syntax check is apart."""
    if (
        not name.endswith(PLAYBOOK_SUFFIXES)
        or any(sep in name for sep in ("/", "\\", os.sep))
        or not name.isprintable()
    ):
        raise RolloutRefused(
            f"playbook {name!r}: playbook names a file in the controller's playbook folder"
            f" ({playbooks_dir}), ending .yml or .yaml"
        )
    path = playbooks_dir.absolute() / name
    if not path.is_file():
        found = playbook_names(playbooks_dir)
        available = f"available: {', '.join(found)}" if found else "it has no playbooks"
        raise RolloutRefused(f"playbook {name!r} is not in {playbooks_dir}; {available}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RolloutRefused(f"playbook {name!r} cannot be read as UTF-8 text: {exc}") from None
    try:
        # compose, not load: Ansible's own tags (!unsafe, !vault) need no constructor.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RolloutRefused(f"playbook {name!r} is not valid YAML{where}: {problem}") from None
    if (
        not isinstance(root, yaml.SequenceNode)
        or not root.value
        or not all(isinstance(play, yaml.MappingNode) for play in root.value)
    ):
        raise RolloutRefused(f"playbook {name!r} is not a list of plays (- name: ..., hosts: ...)")
    return path


def check_syntax(path: Path, name: str, settings: RunnerSettings) -> None:
    """RolloutRefused unless ``ansible-playbook --syntax-check`` passes (a process of its
    own, ~1 s: run after the cheap checks of a request)."""
    if error := _syntax_error(path, settings):
        raise RolloutRefused(f"playbook {name!r}: {error}")


def playbook_names(folder: Path) -> list[str]:
    """The playbooks' file names in ``folder``, sorted; none if it cannot be read."""
    try:
        names = [p.name for p in folder.iterdir() if p.name.endswith(PLAYBOOK_SUFFIXES)]
    except OSError:
        return []
    # NAME.vars.yml is the schema of NAME.yml's extra vars, not a playbook.
    return sorted(n for n in names if not n.endswith((".vars.yml", ".vars.yaml")))


def _syntax_error(path: Path, settings: RunnerSettings) -> str:
    """ansible-playbook --syntax-check's first error, with its line; "" when it passes."""
    with tempfile.TemporaryDirectory(prefix="sf-syntax-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env |= ansible_env(settings, Path(home))
        argv = [str(settings.ansible_bin_dir / "ansible-playbook"), "--syntax-check"]
        argv += ["-i", "localhost,", str(path)]
        try:
            done = subprocess.run(
                argv,
                env=env,
                cwd=path.parent,
                capture_output=True,
                text=True,
                timeout=_SYNTAX_CHECK_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return one_line(f"the syntax check could not run: {exc}")
    if done.returncode == 0:
        return ""
    lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines()]
    error = first_error_in(lines) or next(
        (line for line in reversed(lines) if line), f"exit code {done.returncode}"
    )
    return one_line(error.replace(str(path), path.name))
