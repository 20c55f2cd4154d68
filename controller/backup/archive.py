"""A backup of the controller: its store, CA and SSH files in one archive with a manifest.

The store is copied with SQLite's online backup API in one step: in WAL mode that is a
read transaction, so the copy is one consistent moment of the store while the running
controller goes on writing. The copy is checked (``PRAGMA integrity_check``) before it
goes in the archive. The CA's key is in the archive, so the archive is written 0600,
under a temporary name, and renamed into place only when complete.

Archive layout (tar, gzip): ``manifest.json`` first, then ``store/controller.db`` and
``data/pki/...``, ``data/ssh/...``: the data folder's ``pki`` and ``ssh`` folders. The
manifest names every other member with its size, SHA-256 and mode; controller/backup/restore.py
trusts nothing in the archive that the manifest does not name and match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath

from controller.errors import BackupError

FORMAT = "schoolfleet-controller-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "store/controller.db"
# The data folder's subfolders a controller cannot be rebuilt without: its CA (every
# device's certificate chains to it) and the rollouts' SSH key and known host keys.
# DATA_DIR/rollouts is Ansible's scratch space and is left out.
DATA_FOLDERS = ("pki", "ssh")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Member:
    """One file of the archive as the manifest names it."""

    path: str
    size: int
    sha256: str
    mode: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a backup holds and when it was taken."""

    taken_at: float
    schema_version: int
    controller_version: str
    members: tuple[Member, ...]
    format: str = FORMAT
    version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        body = dataclasses.asdict(self)
        body["taken_at_utc"] = dt.datetime.fromtimestamp(self.taken_at, dt.UTC).isoformat()
        return json.dumps(body, indent=2, sort_keys=True).encode()


def safe_member_path(path: str) -> bool:
    """Whether ``path`` may be written by a restore: the store, or a file under one of
    the data folders, relative, with no ``..`` or empty parts."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return False
    if "\\" in path or "\0" in path:
        return False
    if path == DATABASE:
        return True
    return len(parts) >= 3 and parts[0] == "data" and parts[1] in DATA_FOLDERS


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in ``raw``; BackupError naming what is wrong with it."""
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise BackupError("not a SchoolFleet controller backup (manifest format)")
        if body.get("version") != FORMAT_VERSION:
            raise BackupError(
                f"backup format version {body.get('version')!r}; this controller reads "
                f"{FORMAT_VERSION} (restore it with the controller that made it)"
            )
        members = tuple(
            Member(str(m["path"]), int(m["size"]), str(m["sha256"]), int(m["mode"]))
            for m in body["members"]
        )
        manifest = Manifest(
            taken_at=float(body["taken_at"]),
            schema_version=int(body["schema_version"]),
            controller_version=str(body["controller_version"]),
            members=members,
        )
    except BackupError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"the manifest is damaged: {exc!r}") from None
    paths = [m.path for m in members]
    bad = [p for p in paths if not safe_member_path(p)]
    if bad:
        raise BackupError(f"the manifest names a file a restore may not write: {bad[0]!r}")
    if len(set(paths)) != len(paths):
        raise BackupError("the manifest names a file twice")
    if DATABASE not in paths:
        raise BackupError(f"the manifest names no store ({DATABASE})")
    return manifest


def controller_version() -> str:
    try:
        return version("schoolfleet")
    except PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_store(database: Path, to: Path) -> int:
    """Copies the live store at ``database`` into a new file ``to`` with the online
    backup API, checks the copy and returns its schema version."""
    if not database.is_file():
        raise BackupError(f"database {database}: no such file")
    try:
        # Read-only: a backup never migrates or otherwise changes the live store.
        with (
            contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as source,
            contextlib.closing(sqlite3.connect(to)) as copy,
        ):
            source.execute("PRAGMA busy_timeout=10000")
            # pages=-1: one step, one read transaction, one moment of the store.
            source.backup(copy, pages=-1)
            # A self-contained file: no -wal beside it to forget.
            copy.execute("PRAGMA journal_mode=DELETE")
            return check_store(copy, str(database))
    except sqlite3.Error as exc:
        raise BackupError(f"database {database}: {exc}") from None


def check_store(db: sqlite3.Connection, name: str) -> int:
    """The store's schema version, after SQLite's own integrity check passes."""
    problems = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
    if problems != ["ok"]:
        raise BackupError(f"{name}: integrity check failed: {problems[0]}")
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _data_files(data_dir: Path) -> list[tuple[str, Path]]:
    files = []
    for folder in DATA_FOLDERS:
        root = data_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                raise BackupError(f"{path}: a symbolic link in the data folder; not backed up")
            if path.is_file():
                rel = path.relative_to(data_dir).as_posix()
                files.append((f"data/{rel}", path))
    return files


def take_backup(database: Path, data_dir: Path, to: Path, now: float) -> Manifest:
    """Writes a backup of the store at ``database`` and of ``data_dir``'s pki and ssh
    folders to ``to`` (0600, complete or absent). Refuses to overwrite a file."""
    if to.exists() or to.is_symlink():
        raise BackupError(f"{to} exists; a backup never overwrites a file, choose a new name")
    target_dir = to.absolute().parent
    if not target_dir.is_dir():
        raise BackupError(f"{target_dir}: no such folder")
    for folder in DATA_FOLDERS:
        # Its partial files would be backed up with it.
        if target_dir.resolve().is_relative_to((data_dir / folder).resolve()):
            raise BackupError(f"{to}: inside {data_dir / folder}; write the backup elsewhere")
    with tempfile.TemporaryDirectory(prefix=".sf-backup-", dir=target_dir) as tmp:
        os.chmod(tmp, 0o700)
        store_copy = Path(tmp) / "controller.db"
        schema = copy_store(database, store_copy)
        sources = [(DATABASE, store_copy), *_data_files(data_dir)]
        os.chmod(store_copy, 0o600)
        members = tuple(
            Member(name, path.stat().st_size, _sha256(path), path.stat().st_mode & 0o777)
            for name, path in sources
        )
        manifest = Manifest(now, schema, controller_version(), members)
        partial = Path(tmp) / "archive.tar.gz"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar,
        ):
            _add(tar, MANIFEST, io.BytesIO(manifest.to_json()), len(manifest.to_json()), now)
            for member, (_, path) in zip(members, sources, strict=True):
                with path.open("rb") as f:
                    _add(tar, member.path, f, member.size, now, member.mode)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        # The sources changed while we hashed them? Then the archive is not what the
        # manifest says: refuse rather than keep a backup that would not restore.
        for member, (_, path) in zip(members, sources, strict=True):
            if _sha256(path) != member.sha256:
                raise BackupError(f"{path} changed while it was backed up; run backup again")
        try:
            os.link(partial, to)
        except FileExistsError:
            raise BackupError(f"{to} exists; a backup never overwrites a file") from None
        _fsync_dir(target_dir)
    return manifest


def _add(
    tar: tarfile.TarFile,
    name: str,
    data: io.IOBase | io.BufferedReader,
    size: int,
    now: float,
    mode: int = 0o600,
) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(now), mode
    tar.addfile(info, data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
