"""A repository's maintenance: integrity check, and prune (every backup's retention first)."""

from __future__ import annotations

from henbackup.config.model import Config
from henbackup.engine.base import CheckResult, Engine
from henbackup.errors import EngineError
from henbackup.jobs.job import Job, run_job
from henbackup.jobs.targets import target_for
from henbackup.observe.events import EmitFunction, FieldValue


def run_check(
    job: Job, config: Config, engine: Engine, emit: EmitFunction, subset: str | None = None
) -> CheckResult:
    """Check `job.repository` (reading `subset` of the data, if given); raises on failure."""
    target = target_for(config, config.repositories[job.repository])

    def work() -> CheckResult:
        result = engine.check(target, subset)
        if not result.ok:
            raise EngineError(f"check found problems: {'; '.join(result.errors[:3])}")
        return result

    return run_job(job, emit, work, engine=engine)


def run_prune(job: Job, config: Config, engine: Engine, emit: EmitFunction) -> None:
    """Forget by each backup's retention on `job.repository`, then prune; raises on failure."""
    target = target_for(config, config.repositories[job.repository])
    host = config.daemon.hostname

    def work() -> int:
        forgotten = 0
        for backup in config.backups.values():
            if job.repository in backup.repositories and backup.retention is not None:
                result = engine.forget(target, backup.retention, backup.name, host)
                forgotten += len(result.removed)
        engine.prune(target)
        return forgotten

    run_job(job, emit, work, _prune_outcome, engine)


def _prune_outcome(forgotten: int) -> tuple[str, dict[str, FieldValue]]:
    return f": {forgotten} snapshots forgotten", {"snapshots_removed": forgotten}
