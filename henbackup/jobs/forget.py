"""Retention: forget a backup's old snapshots on one repository (its tag and host only)."""

from __future__ import annotations

from henbackup.config.model import Config
from henbackup.engine.base import Engine, ForgetResult
from henbackup.jobs.job import Job, run_job
from henbackup.jobs.targets import target_for
from henbackup.observe.events import EmitFunction, FieldValue


def run_forget(job: Job, config: Config, engine: Engine, emit: EmitFunction) -> ForgetResult:
    """Apply the backup's retention on `job.repository`; raises on failure."""
    backup = config.backups[job.backup or ""]
    policy = backup.retention
    assert policy is not None, "forget needs a retention policy"
    target = target_for(config, config.repositories[job.repository], backup)
    host = config.daemon.hostname

    def work() -> ForgetResult:
        return engine.forget(target, policy, backup.name, host)

    return run_job(job, emit, work, _outcome, engine)


def _outcome(result: ForgetResult) -> tuple[str, dict[str, FieldValue]]:
    return f": kept {len(result.kept)}, removed {len(result.removed)}", {
        "snapshots": len(result.kept),
        "snapshots_removed": len(result.removed),
    }
