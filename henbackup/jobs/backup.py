"""One backup of one backup definition to one repository."""

from __future__ import annotations

from henbackup.config.model import Config
from henbackup.engine.base import BackupRequest, BackupResult, Engine, Target
from henbackup.errors import EngineError
from henbackup.jobs.job import Job, ProgressReporter, run_job
from henbackup.jobs.targets import target_for
from henbackup.observe.events import EmitFunction, FieldValue


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
        engine.ensure_initialized(target)
        result = engine.backup(target, request, ProgressReporter(job, emit))
        for warning in result.warnings:
            emit("job.warning", f"{job.title}: {warning}", **job.fields(), error=warning)
        # With a retention, the forget that follows counts what is kept.
        count = None if backup.retention else _count(engine, target, request)
        return result, count

    result, _ = run_job(job, emit, work, _outcome, engine)
    return result


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
