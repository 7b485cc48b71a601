"""What one trigger of a backup does (SPEC "Jobs, priorities, concurrency").

The `before` hooks once; then one job per repository, each waiting for its own turn in the
host-wide queue (a failing repository does not stop the others), with retention after a
successful backup; then the `after` hooks, or the `failure` hooks when anything failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from henbackup.config.model import Backup, Config
from henbackup.engine.base import Engine
from henbackup.errors import HenbackupError, JobCancelled
from henbackup.hooks.outcome import HookContext
from henbackup.hooks.run import run_with_hooks
from henbackup.jobs.backup import run_backup
from henbackup.jobs.forget import run_forget
from henbackup.jobs.job import Job
from henbackup.observe.events import EmitFunction
from henbackup.scheduler.queue import Scheduler
from henbackup.scheduler.ticket import Ticket, mode_for


@dataclass(frozen=True)
class Outcome:
    repository: str
    snapshot_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class PipelineResult:
    status: str  # succeeded, failed, skipped (a before hook exited 75)
    outcomes: tuple[Outcome, ...]
    error: str | None = None


@contextlib.contextmanager
def queued(job: Job, scheduler: Scheduler | None, emit: EmitFunction) -> Iterator[None]:
    """Hold the job's place (a slot, its repository) in the host-wide queue for the block."""
    if scheduler is None:
        yield
        return
    ticket = Ticket(
        job.id, job.repository, job.priority, mode_for(job.operation), job.operation, job.backup
    )

    def on_queued(position: int) -> None:
        message = f"{job.title}: {job.operation} queued, position {position}"
        emit("job.queued", message, **job.fields(), position=position)

    with scheduler.acquire(ticket, on_queued=on_queued):
        yield


def run_backup_pipeline(
    config: Config,
    name: str,
    engine: Engine,
    emit: EmitFunction,
    trigger: str = "manual",
    scheduler: Scheduler | None = None,
) -> PipelineResult:
    """Hooks around one backup job per repository; returns every repository's outcome."""
    backup = config.backups[name]
    outcomes: list[Outcome] = []

    def jobs() -> str | None:
        for repository in backup.repositories:
            outcomes.append(_to(repository, backup, config, engine, emit, trigger, scheduler))
        failed = [o.repository for o in outcomes if not o.ok]
        return f"failed on {', '.join(failed)}" if failed else None

    context = HookContext(backup=name, phase="before", trigger=trigger)
    result = run_with_hooks(backup.hooks, context, emit, jobs)
    return PipelineResult(result.status, tuple(outcomes), result.error)


def _to(
    repository: str,
    backup: Backup,
    config: Config,
    engine: Engine,
    emit: EmitFunction,
    trigger: str,
    scheduler: Scheduler | None,
) -> Outcome:
    """Back up to one repository (then forget by the retention); never raises but cancel."""
    job = Job("backup", repository, backup.name, trigger, backup.priority)
    try:
        with queued(job, scheduler, emit):
            result = run_backup(job, config, engine, emit)
            if backup.retention is not None:
                forget = Job("forget", repository, backup.name, trigger, backup.priority)
                run_forget(forget, config, engine, emit)
    except JobCancelled:
        raise  # nothing more runs once the job is cancelled
    except HenbackupError as error:
        return Outcome(repository, error=str(error))
    return Outcome(repository, snapshot_id=result.snapshot_id)
