"""Restore a backup (controller/backup/archive.py) into a stopped controller's data folder.

Everything is checked before anything is replaced: the manifest, every member's size
and SHA-256, that the archive holds nothing the manifest does not name, the store's
integrity and that its schema is one this controller can migrate. The files are then
staged beside their places and renamed in; if a rename fails, those done are undone,
so the folder holds the old files or the new ones, never a mix. What ``--force``
replaces is kept aside (``DATA_DIR/replaced-<time>``), never deleted.

A restored folder carries DATA_DIR/restored.json (when the backup was taken and when
it was restored): what the controller's admission of certificates issued after the
backup reads (controller/enroll/restored.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.backup.archive import (
    DATABASE,
    MANIFEST,
    Manifest,
    Member,
    check_store,
    parse_manifest,
)
from controller.datadir import lock as data_lock
from controller.datadir.private_files import private_dir
from controller.enroll.restored import RESTORED_MARK
from controller.errors import BackupError, ConfigError
from controller.store.migrations import LATEST

# A bound on what one member may be: the store of a city's fleet is far below it,
# and a hostile archive cannot fill the disk through a restore.
_MAX_MEMBER = 64 << 30
_CHUNK = 1 << 20
_SIDECARS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did."""

    manifest: Manifest
    replaced_to: Path | None


def _occupied(database: Path, data_dir: Path) -> list[str]:
    """What is in the way of a restore: the store (or its sidecars) and the data
    folder's contents other than its lock."""
    found = [
        p.name
        for p in (database, *(database.with_name(database.name + s) for s in _SIDECARS))
        if p.exists()
    ]
    if data_dir.is_dir():
        found += sorted(
            p.name
            for p in data_dir.iterdir()
            if not _leftover(p.name)
            and p.absolute() != database.absolute()
            and not any(p.name == database.name + s for s in _SIDECARS)
        )
    return found


def _leftover(name: str) -> bool:
    """The lock, and what earlier restores left: never in a restore's way."""
    return name == data_lock.LOCK_NAME or name.startswith(("replaced-", ".restoring-"))


def _verified_members(tar: tarfile.TarFile, staging: Path) -> Manifest:
    """Reads the archive into ``staging`` (members written under their manifest path),
    checking each against the manifest; the manifest is returned only if all match."""
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile() or first.size > 1 << 20:
        raise BackupError(f"not a SchoolFleet controller backup (no {MANIFEST} first)")
    raw = tar.extractfile(first)
    assert raw is not None, "a regular member has a file object"
    manifest = parse_manifest(raw.read())
    expected = {m.path: m for m in manifest.members}
    seen: set[str] = set()
    while (info := tar.next()) is not None:
        member = expected.get(info.name)
        if member is None or not info.isfile() or info.name in seen:
            raise BackupError(f"the archive holds {info.name!r}, which the manifest does not name")
        if info.size != member.size or info.size > _MAX_MEMBER:
            raise BackupError(f"{info.name}: {info.size} bytes, the manifest says {member.size}")
        _write_checked(tar, info, member, staging / member.path)
        seen.add(info.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"the archive lacks {missing[0]}, which the manifest names")
    return manifest


def _write_checked(tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member, to: Path) -> None:
    source = tar.extractfile(info)
    assert source is not None, "a regular member has a file object"
    to.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # At most 0644: the CA certificate is public, nothing in the archive is executable.
    fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, member.mode & 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != member.sha256:
        raise BackupError(f"{member.path}: SHA-256 does not match the manifest (damaged archive)")


def _check_staged_store(path: Path, manifest: Manifest) -> None:
    if manifest.schema_version > LATEST:
        raise BackupError(
            f"the backup's store is at schema {manifest.schema_version}, newer than this "
            f"controller knows ({LATEST}); restore it with a controller at least as new"
        )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            schema = check_store(db, "the backup's store")
    except sqlite3.Error as exc:
        raise BackupError(f"the backup's store cannot be read: {exc}") from None
    if schema != manifest.schema_version:
        raise BackupError(
            f"the backup's store is at schema {schema}, the manifest says {manifest.schema_version}"
        )


def _swap(moves: list[tuple[Path, Path]]) -> None:
    """Renames each (from, to) in order; on a failure, undoes those done and re-raises."""
    done: list[tuple[Path, Path]] = []
    try:
        for source, target in moves:
            os.rename(source, target)
            done.append((source, target))
    except BaseException:
        for source, target in reversed(done):
            with contextlib.suppress(OSError):
                os.rename(target, source)
        raise


def restore_backup(
    archive: Path, database: Path, data_dir: Path, *, force: bool, now: float
) -> Restored:
    """Restores ``archive`` into ``data_dir`` and the store at ``database``."""
    data_dir, database = data_dir.absolute(), database.absolute()
    private_dir(data_dir)
    try:
        # Held until the restore is done: a controller started meanwhile is refused.
        lock = data_lock.hold(data_dir)
    except ConfigError:
        raise BackupError(
            f"the controller is running on {data_dir}; stop it before a restore"
        ) from None
    try:
        return _restore(archive, database, data_dir, force=force, now=now)
    finally:
        os.close(lock)


def _restore(archive: Path, database: Path, data_dir: Path, *, force: bool, now: float) -> Restored:
    occupied = _occupied(database, data_dir)
    if occupied and not force:
        raise BackupError(
            f"{data_dir} is not empty ({', '.join(occupied[:4])}); restore into an empty "
            "data folder, or pass --force to replace its contents (kept aside, not deleted)"
        )
    try:
        # Closed by the `with` below, once the folders it is staged in exist.
        tar = tarfile.open(archive, mode="r:gz")  # noqa: SIM115
    except FileNotFoundError:
        raise BackupError(f"{archive}: no such file") from None
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{archive}: not a readable backup ({exc})") from None
    if not database.parent.exists():
        private_dir(database.parent)
    # Staged on the file systems of their places, so that moving them in is a rename.
    with (
        tar,
        tempfile.TemporaryDirectory(prefix=".restoring-", dir=data_dir) as staged_data,
        tempfile.TemporaryDirectory(prefix=".restoring-", dir=database.parent) as staged_db,
    ):
        staging = Path(staged_data)
        try:
            manifest = _verified_members(tar, staging)
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise BackupError(f"{archive}: damaged archive ({exc})") from None
        store = Path(staged_db) / "controller.db"
        os.rename(staging / DATABASE, store)
        _check_staged_store(store, manifest)
        mark = staging / RESTORED_MARK
        mark.write_text(_mark(manifest, archive.absolute(), now))
        os.chmod(mark, 0o600)
        return _move_in(staging, store, database, data_dir, occupied, now, manifest)


def _move_in(
    staging: Path,
    store: Path,
    database: Path,
    data_dir: Path,
    occupied: list[str],
    now: float,
    manifest: Manifest,
) -> Restored:
    replaced_to: Path | None = None
    moves: list[tuple[Path, Path]] = []
    if occupied:
        replaced_to = _new_folder(data_dir, now)
        kept = [database, *(database.with_name(database.name + s) for s in _SIDECARS)]
        kept += [p for p in data_dir.iterdir() if p.name in occupied and not _leftover(p.name)]
        # The old store's -wal must go with it: beside the restored file it would be
        # replayed into it.
        moves += [(p, replaced_to / p.name) for p in dict.fromkeys(kept) if p.exists()]
    staged_data = staging / "data"
    if staged_data.is_dir():
        moves += [(p, data_dir / p.name) for p in sorted(staged_data.iterdir())]
    moves.append((staging / RESTORED_MARK, data_dir / RESTORED_MARK))
    # Last: until the store is in place, the folder holds no store at all.
    moves.append((store, database))
    try:
        _swap(moves)
    except OSError as exc:
        if replaced_to is not None:
            replaced_to.rmdir()
        raise BackupError(f"restore undone, nothing changed: {exc}") from None
    for folder in {data_dir, database.parent}:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return Restored(manifest, replaced_to)


def _new_folder(data_dir: Path, now: float) -> Path:
    """DATA_DIR/replaced-<UTC time>, with a number added if a restore made one already."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 100):
        folder = data_dir / (f"replaced-{stamp}" if n == 1 else f"replaced-{stamp}-{n}")
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return folder
    raise BackupError(f"{data_dir}: too many replaced-{stamp} folders")


def _mark(manifest: Manifest, archive: Path, now: float) -> str:
    return json.dumps(
        {
            "backup_taken_at": manifest.taken_at,
            "restored_at": now,
            "archive": str(archive),
            "schema_version": manifest.schema_version,
            "controller_version": manifest.controller_version,
        },
        indent=2,
        sort_keys=True,
    )
