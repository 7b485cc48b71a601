"""One backup of one backup definition to one repository."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from henbackup.config.dirs import Dirs
from henbackup.config.model import Config
from henbackup.engine.base import BackupRequest, BackupResult, Engine, Target
from henbackup.errors import EngineError, RepositoryLocked
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
        ensure_repository(engine, target, Dirs.from_environment().repositories)
        result = engine.backup(target, request, ProgressReporter(job, emit))
        for warning in result.warnings:
            emit("job.warning", f"{job.title}: {warning}", **job.fields(), error=warning)
        # With a retention, the forget that follows counts what is kept.
        count = None if backup.retention else _count(engine, target, request)
        return result, count

    result, _ = run_job(job, emit, work, _outcome, engine)
    return result


def ensure_repository(engine: Engine, target: Target, lock_dir: Path) -> bool:
    """Create the repository if it is new, once per host; True if this call created it.

    Concurrent `restic init`s of one location each write a key, and the repository ends up
    one that restic cannot open. A flock per location, host-wide (jobs of every worker and
    `henbackup backup` by hand), lets one create it; the others then find it there.
    """
    # A digest: the location may hold credentials, which never go into a file name.
    path = lock_dir / f"init-{hashlib.sha256(target.location.encode()).hexdigest()[:32]}"
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


def _count(engine: Engine, target: Target, request: BackupRequest) -> int | None:
    """How many snapshots the backup has in the repository (for metrics), None if unknown."""
    try:
        return len(engine.snapshots(target, request.backup, request.host))
    except EngineError:
        return None


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
