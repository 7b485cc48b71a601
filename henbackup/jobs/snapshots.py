"""Listing the snapshots of one repository (optionally of one backup)."""

from __future__ import annotations

from henbackup.config.model import Config
from henbackup.engine.base import Engine, Snapshot
from henbackup.jobs.job import Job, run_job
from henbackup.jobs.targets import target_for
from henbackup.observe.events import EmitFunction, FieldValue


def run_snapshots(job: Job, config: Config, engine: Engine, emit: EmitFunction) -> list[Snapshot]:
    """The snapshots in `job.repository` (of `job.backup` only, if set), newest first."""
    target = target_for(config, config.repositories[job.repository])

    def work() -> list[Snapshot]:
        return sorted(engine.snapshots(target, job.backup), key=lambda s: s.time, reverse=True)

    return run_job(job, emit, work, _outcome, engine)


def _outcome(snapshots: list[Snapshot]) -> tuple[str, dict[str, FieldValue]]:
    return f": {len(snapshots)} snapshots", {}


def snapshot_row(snapshot: Snapshot, repository: str) -> dict[str, object]:
    """One snapshot as `henbackupctl list-snapshots --json` prints it."""
    return {
        "id": snapshot.id,
        "short_id": snapshot.short_id,
        "time": snapshot.time.isoformat(),
        "backup": snapshot.backup,
        "repository": repository,
        "host": snapshot.host,
        "paths": list(snapshot.paths),
        "tags": list(snapshot.tags),
        "bytes_added": snapshot.bytes_added,
    }
