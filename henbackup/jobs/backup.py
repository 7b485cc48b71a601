"""One backup of one backup definition to one repository."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from henbackup.config.dirs import Dirs
from henbackup.config.model import Config
from henbackup.engine.base import BackupRequest, BackupResult, Engine, Target
from henbackup.errors import EngineError, RepositoryLocked, RepositoryMissing
from henbackup.humanize import duration
from henbackup.jobs.job import Job, ProgressReporter, run_job
from henbackup.jobs.targets import target_for
from henbackup.observe.events import EmitFunction, FieldValue
from henbackup.scheduler import locks

# How long a job waits while another job of this host creates the same repository.
INIT_WAIT = 10 * 60.0


def run_backup(job: Job, config: Config, engine: Engine, emit: EmitFunction) -> BackupResult:
    """Back up `job.backup` to `job.repository` (initialising it if new); raises on failure."""
    backup = config.backups[job.backup or ""]
    target = target_for(config, config.repositories[job.repository], backup)
    request = BackupRequest(
        backup=backup.name,
        paths=backup.paths,
        excludes=backup.excludes,
        host=config.daemon.hostname,
    )

    def work() -> tuple[BackupResult, int | None]:
        result, created = _back_up(job, engine, target, request, emit)
        for warning in result.warnings:
            emit("job.warning", f"{job.title}: {warning}", **job.fields(), error=warning)
        # Counted without asking the repository: a new one holds what this backup made;
        # else the status model adds this snapshot to what it knows (observe/status.py).
        count = (1 if result.snapshot_id else 0) if created else None
        return result, count

    result, _ = run_job(job, emit, work, _outcome, engine)
    return result


def _back_up(
    job: Job, engine: Engine, target: Target, request: BackupRequest, emit: EmitFunction
) -> tuple[BackupResult, bool]:
    """The backup, and whether this job created the repository for it.

    The repository is not probed first (each restic run opens it again, and pays the key
    derivation): a missing one is the backup's own failure, then created and the backup
    run again. Only where this host never backed up before: one that went missing since
    is a disk not mounted, or another server, and a new repository there would fill a disk
    nobody watches with backups nobody knows of.
    """
    dirs = Dirs.from_environment()
    known = dirs.known_repositories / f"known-{_digest(target.location)}"
    try:
        result = engine.backup(target, request, ProgressReporter(job, emit))
        _mark(known)
        return result, False
    except RepositoryMissing:
        if os.path.exists(known):  # False too where it cannot be looked at
            raise RepositoryMissing(
                f"repository {target.name}: no repository is at its location any more, though"
                " this host backed up there before: is its disk mounted, is it the right"
                " server? A repository is created only where none ever was (to start a new"
                f" one there, remove {known})"
            ) from None
    created = ensure_repository(engine, target, dirs.repositories)
    if created:
        message = f"{job.title}: repository {target.name} did not exist: initialised"
        emit("repository.initialized", message, **job.fields())
    result = engine.backup(target, request, ProgressReporter(job, emit))
    _mark(known)
    return result, created


def _digest(location: str) -> str:
    """A file name for a location: it may hold credentials, which never go into one."""
    return hashlib.sha256(location.encode()).hexdigest()[:32]


def _mark(known: Path) -> None:
    """Remember that this host backed up to a repository (a full disk only forgets it)."""
    if not os.path.exists(known):
        with contextlib.suppress(OSError):
            known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            known.touch(mode=0o600)


def ensure_repository(engine: Engine, target: Target, lock_dir: Path) -> bool:
    """Create the repository if it is new, once per host; True if this call created it.

    Concurrent `restic init`s of one location each write a key, and the repository ends up
    one that restic cannot open. A flock per location, host-wide (jobs of every worker and
    `henbackup backup` by hand), lets one create it; the others then find it there.
    """
    path = lock_dir / f"init-{_digest(target.location)}"
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = locks.wait_lock(path, locks.EXCLUSIVE, INIT_WAIT, engine.checkpoint)
    except OSError as error:
        reason = error.strerror or str(error)
        message = f"cannot lock {path} (to create repository {target.name}): {reason}"
        raise EngineError(message) from None
    if fd is None:
        raise RepositoryLocked(
            f"repository {target.name}: another job of this host has been creating it for "
            f"over {duration(INIT_WAIT)}; the next run tries again"
        )
    try:
        return engine.ensure_initialized(target)
    finally:
        os.close(fd)


def _outcome(done: tuple[BackupResult, int | None]) -> tuple[str, dict[str, FieldValue]]:
    result, count = done
    # restic 0.14 reports the short id, 0.18 the long one: the message always says the short.
    snapshot = f": snapshot {result.snapshot_id[:8]}" if result.snapshot_id else ": nothing changed"
    return snapshot, {
        "snapshots": count,
        "snapshot": result.snapshot_id,
        "files_new": result.files_new,
        "files_changed": result.files_changed,
        "bytes_added": result.bytes_added,
        "bytes_processed": result.bytes_processed,
    }
