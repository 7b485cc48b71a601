"""Restoring one snapshot from one repository."""

from __future__ import annotations

from henbackup.config.model import Config
from henbackup.engine.base import Engine, RestoreResult, Snapshot
from henbackup.errors import SnapshotNotFound
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

    return run_job(job, emit, work, outcome, engine)
