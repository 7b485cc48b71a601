"""What one trigger of a backup does: a job per repository, then retention on each.

A failing repository does not stop the others; each gets its own outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

from henbackup.config.model import Config
from henbackup.engine.base import Engine
from henbackup.errors import HenbackupError, JobCancelled
from henbackup.jobs.backup import run_backup
from henbackup.jobs.forget import run_forget
from henbackup.jobs.job import Job
from henbackup.observe.events import EmitFunction


@dataclass(frozen=True)
class Outcome:
    repository: str
    snapshot_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_backup_pipeline(
    config: Config, name: str, engine: Engine, emit: EmitFunction, trigger: str = "manual"
) -> list[Outcome]:
    """Back up `name` to each of its repositories in turn; returns one outcome each."""
    backup = config.backups[name]
    outcomes = []
    for repository in backup.repositories:
        job = Job("backup", repository, name, trigger, backup.priority)
        try:
            result = run_backup(job, config, engine, emit)
            if backup.retention is not None:
                run_forget(
                    Job("forget", repository, name, trigger, backup.priority), config, engine, emit
                )
        except JobCancelled:
            raise  # nothing more runs once the job is cancelled
        except HenbackupError as error:
            outcomes.append(Outcome(repository, error=str(error)))
            continue
        outcomes.append(Outcome(repository, snapshot_id=result.snapshot_id))
    return outcomes
