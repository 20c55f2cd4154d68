"""Shell completion of what only the controller knows: device, school and rollout ids
and playbook names.

A shell waits for completion while the user types, so the controller is asked at most
once a minute per kind (the answers are kept in the user's cache folder, readable by
them only: they are the ids this user may see) and never waits more than a second; a
slow, absent or refusing controller completes from the last answer kept, or nothing.
Completion never prints an error: the shell would show it as a candidate.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.config import config_path, read_config

if TYPE_CHECKING:
    from cli.client.admin import AdminClient

TTL = 60.0
TIMEOUT = 1.0
_DEFAULT_CONTROLLER = "127.0.0.1:7443"  # cli.options.DEFAULT_CONTROLLER, without its import


def cache_path(environ: Mapping[str, str], address: str, token: str) -> Path:
    """One file per controller and user: $XDG_CACHE_HOME (~/.cache)/schoolfleet/..."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    key = hashlib.sha256(f"{address}\0{token}".encode()).hexdigest()[:24]
    return Path(base) / "schoolfleet" / f"completion-{key}.json"


def fresh(entry: object, now: float, ttl: float = TTL) -> list[str] | None:
    """The names of a kept answer younger than ``ttl``; None if there is none."""
    names = stale(entry)
    if names is None or not isinstance(entry, dict):
        return None
    at = entry.get("at")
    return names if isinstance(at, int | float) and 0 <= now - at < ttl else None


def stale(entry: object) -> list[str] | None:
    """The names of a kept answer, however old."""
    if not isinstance(entry, dict):
        return None
    names = entry.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, object]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass  # completion still works, it just asks again next time


def _client(ctx: typer.Context) -> tuple[AdminClient, Path] | None:
    """A client as the command being completed would make it, with a short timeout."""
    from cli.client.admin import AdminClient
    from cli.errors import CliError

    root = ctx.find_root().params
    try:
        saved = read_config(config_path(os.environ))
    except CliError:
        return None
    address = root.get("controller") or saved.controller or _DEFAULT_CONTROLLER
    token = os.environ.get("SCHOOLCTL_TOKEN") or saved.token
    if not token:
        return None
    ca_path = root.get("ca_cert") or saved.ca_cert
    try:
        ca = Path(ca_path).read_bytes() if ca_path else None
    except OSError:
        return None
    client = AdminClient(str(address), TIMEOUT, ca, token)
    return client, cache_path(os.environ, str(address), token)


def names(ctx: typer.Context, kind: str, ask: Callable[[AdminClient], list[str]]) -> list[str]:
    """The controller's ``kind`` names, kept for a minute; [] whenever it cannot say."""
    made = _client(ctx)
    if made is None:
        return []
    client, path = made
    kept = _read(path)
    now = time.time()
    answer = fresh(kept.get(kind), now)
    if answer is not None:
        client.__exit__(None, None, None)
        return answer
    try:
        with client:
            answer = sorted(set(ask(client)))
    except Exception:
        return stale(kept.get(kind)) or []
    kept[kind] = {"at": now, "names": answer}
    _write(path, kept)
    return answer


def _starting(candidates: list[str], incomplete: str) -> list[str]:
    return [c for c in candidates if c.startswith(incomplete)]


def devices(ctx: typer.Context, incomplete: str) -> list[str]:
    """Device ids the user may see."""
    found = names(ctx, "devices", lambda c: [d.identity.device_id for d in c.fleet.devices()])
    return _starting(found, incomplete)


def schools(ctx: typer.Context, incomplete: str) -> list[str]:
    """School ids with devices, within the user's schools."""
    found = names(ctx, "schools", lambda c: [n.school_id for n in c.fleet.status().counts])
    return _starting(found, incomplete)


def rollouts(ctx: typer.Context, incomplete: str) -> list[str]:
    """The latest rollouts' numbers the user may see."""
    found = names(
        ctx, "rollouts", lambda c: [str(r.rollout_id) for r in c.rollouts.latest((), limit=100)]
    )
    return sorted(_starting(found, incomplete), key=int, reverse=True)


def playbooks(ctx: typer.Context, incomplete: str) -> list[str]:
    """The playbooks in the controller's folder."""
    return _starting(names(ctx, "playbooks", lambda c: c.rollouts.playbooks()), incomplete)
