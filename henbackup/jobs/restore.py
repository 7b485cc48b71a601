"""Restoring one snapshot from one repository, into a directory nobody else could redirect.

restic follows links it finds where it writes (0.14 even a planted link in place of a file),
and writes through any directory it is given. So a restore only ever writes into a directory
made fresh with mkdir (mode 0700, root's) at a place only root can change: nothing anyone
planted can be inside it, no one can swap it for a link while restic writes, and no one
else can open what restic writes there.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import time
from pathlib import Path

from henbackup.config.model import Config
from henbackup.engine.base import Engine, RestoreResult, Snapshot
from henbackup.errors import SnapshotNotFound, UnsafeTarget
from henbackup.jobs.job import Job, ProgressReporter, run_job
from henbackup.jobs.targets import target_for
from henbackup.observe.events import EmitFunction, FieldValue


def find_snapshot(config: Config, engine: Engine, repository: str, wanted: str) -> Snapshot:
    """The snapshot whose id starts with `wanted`; raises SnapshotNotFound (or EngineError)."""
    target = target_for(config, config.repositories[repository])
    matches = [s for s in engine.snapshots(target) if s.id.startswith(wanted.lower())]
    if len(matches) != 1:
        how = "no snapshot" if not matches else "more than one snapshot"
        raise SnapshotNotFound(
            f"{how} with id {wanted!r} in {repository}: "
            f"see henbackupctl list-snapshots {repository}"
        )
    return matches[0]


def run_restore(
    job: Job,
    config: Config,
    engine: Engine,
    emit: EmitFunction,
    snapshot: Snapshot,
    destination: str,
    includes: tuple[str, ...] = (),
) -> RestoreResult:
    """Restore `snapshot` from `job.repository` under `destination`; raises on failure."""
    target = target_for(config, config.repositories[job.repository])

    def work() -> RestoreResult:
        progress = ProgressReporter(job, emit)
        return engine.restore(target, snapshot.id, destination, includes, progress)

    def outcome(result: RestoreResult) -> tuple[str, dict[str, FieldValue]]:
        return f": snapshot {snapshot.short_id} into {result.target}", {
            "snapshot": snapshot.id,
            "target": result.target,
            "files_restored": result.files_restored,
            "bytes_restored": result.bytes_restored,
        }

    return run_job(job, emit, work, outcome)


def fresh_directory(parent: str, name: str) -> Path:
    """A new directory `parent`/NAME-WHEN (or NAME-WHEN-2…), made with mkdir, mode 0700.

    `parent` is absolute; what is missing of it is made (0700). Raises UnsafeTarget when a
    part of `parent` is a symbolic link or a directory that anyone but root may change.
    """
    fd = _open_trusted(parent)
    try:
        stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        for attempt in itertools.count(1):
            child = stem if attempt == 1 else f"{stem}-{attempt}"
            with contextlib.suppress(FileExistsError):
                os.mkdir(child, 0o700, dir_fd=fd)
                return Path(parent, child)
    finally:
        os.close(fd)
    raise AssertionError("unreachable")


def _open_trusted(path: str) -> int:
    """`path` opened as a directory, part by part, never through a link, each part checked."""
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        raise UnsafeTarget(f"{path}: give a plain absolute path (no . or ..)")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd, walked = os.open("/", flags), Path("/")
    try:
        _check_trusted(fd, walked)
        for part in walked.joinpath(path).parts[1:]:
            walked = walked / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as error:
                raise UnsafeTarget(
                    f"{walked} is a symbolic link or not a directory: a restore never follows"
                    " links; give the real path of a directory"
                ) from error
            os.close(fd)
            fd = child
            _check_trusted(fd, walked)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_trusted(fd: int, path: Path) -> None:
    """Raises UnsafeTarget if someone but root (or this daemon's user) may change `path`'s
    entries: they could replace the restore's directory with a link while restic writes."""
    st = os.fstat(fd)
    sticky = bool(st.st_mode & stat.S_ISVTX)  # others may add entries, not move root's
    if st.st_uid not in (0, os.geteuid()):
        who = f"uid {st.st_uid}"
    elif st.st_mode & stat.S_IWOTH and not sticky:
        who = "everyone"
    elif st.st_mode & stat.S_IWGRP and st.st_gid != 0 and not sticky:
        who = f"group {st.st_gid}"
    else:
        return
    raise UnsafeTarget(
        f"{path} can be changed by {who}, who could redirect the restore: restore into a"
        " directory only root can change (the default, or another --target)"
    )
