"""What one trigger of a backup does (henbackup.toml(5), TRIGGERS).

The `before` hooks once; then one job per repository, each waiting for its own turn in the
host-wide queue (a failing repository does not stop the others), with retention after a
successful backup; then the `after` hooks, or the `failure` hooks when anything failed. A
before hook that stops the run fails every job it kept from starting (a job.failed each,
naming the hook), so that status, metrics and the journal count the run as failed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

from henbackup.config.model import Backup, Config, Priority
from henbackup.engine.base import Engine
from henbackup.errors import HenbackupError, JobCancelled, StopRequested
from henbackup.hooks.outcome import HookContext
from henbackup.hooks.run import run_hook, run_with_hooks
from henbackup.jobs.backup import run_backup
from henbackup.jobs.forget import run_forget
from henbackup.jobs.job import Job
from henbackup.observe.events import EmitFunction
from henbackup.process import SafePoint
from henbackup.scheduler.queue import Scheduler
from henbackup.scheduler.ticket import Ticket, mode_for


@dataclass(frozen=True)
class RepositoryOutcome:
    """What one repository's job of a backup run came to: its snapshot or its error."""

    repository: str
    snapshot_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class PipelineResult:
    status: str  # succeeded, failed, skipped (a before hook exited 75)
    outcomes: tuple[RepositoryOutcome, ...]
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

    def on_queued(position: int, stamped: Ticket) -> None:
        message = f"{job.title}: {job.operation} queued, position {position}"
        place = {"sequence": stamped.sequence, "queued_at": stamped.queued_at}
        emit("job.queued", message, **job.fields(), position=position, pid=stamped.pid, **place)

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(scheduler.acquire(ticket, on_queued=on_queued))
        except JobCancelled:  # cancelled (or the daemon stopping) while it waited
            emit("job.cancelled", f"{job.title}: {job.operation} cancelled", **job.fields())
            raise
        yield


def run_backup_pipeline(
    config: Config,
    name: str,
    engine: Engine,
    emit: EmitFunction,
    trigger: str = "manual",
    scheduler: Scheduler | None = None,
    only: str | None = None,
    priority: Priority | None = None,
    safe_point: SafePoint | None = None,
) -> PipelineResult:
    """Hooks around one backup job per repository; returns every repository's outcome.

    `only` restricts the run to one of the backup's repositories; `priority` overrides the
    configured one (both for runs asked by hand). `safe_point` is where the job process
    acts on its signals: hooks and the time between repositories.
    """
    backup = config.backups[name]
    outcomes: list[RepositoryOutcome] = []
    repositories = [only] if only else backup.repositories
    job_priority = priority or backup.priority

    def jobs() -> str | None:
        for repository in repositories:
            if safe_point is not None:
                safe_point.check()
            job = Job("backup", repository, name, trigger, job_priority)
            outcomes.append(_back_up_to_repository(job, backup, config, engine, emit, scheduler))
        reasons = [f"{o.repository}: {o.error}" for o in outcomes if o.error is not None]
        return "; ".join(reasons) or None

    context = HookContext(name, "before", trigger=trigger, host=config.daemon.hostname)
    runner = functools.partial(run_hook, safe_point=safe_point)
    result = run_with_hooks(backup.hooks, context, emit, jobs, runner)
    if result.before.stop:
        error = f"before hook {result.before.error}"
        for repository in repositories:
            job = Job("backup", repository, name, trigger, job_priority)
            outcomes.append(_stopped_by_hook(job, error, emit))
    return PipelineResult(result.status, tuple(outcomes), result.error)


def _stopped_by_hook(job: Job, error: str, emit: EmitFunction) -> RepositoryOutcome:
    """A job a failing before hook kept from starting: it failed (its status, its metrics,
    `journalctl HENBACKUP_EVENT=job.failed` must say so), with the hook's reason."""
    message = f"{job.title}: {job.operation} failed: {error} (the run stopped)"
    emit("job.failed", message, **job.fields(), error=error)
    return RepositoryOutcome(job.repository, error=error)


def _back_up_to_repository(
    job: Job,
    backup: Backup,
    config: Config,
    engine: Engine,
    emit: EmitFunction,
    scheduler: Scheduler | None,
) -> RepositoryOutcome:
    """Back up to one repository (then forget by the retention).

    Never raises but StopRequested: a job cancelled alone lets the next repository's run.
    """
    repository = job.repository
    try:
        with queued(job, scheduler, emit):
            result = run_backup(job, config, engine, emit)
            if backup.retention is not None:
                forget = Job(
                    "forget", repository, backup.name, job.trigger, job.priority, ticket=job.id
                )
                run_forget(forget, config, engine, emit)
    except StopRequested:
        raise  # nothing more runs once the whole run is stopped
    except JobCancelled:
        return RepositoryOutcome(repository, error="cancelled")
    except HenbackupError as error:
        return RepositoryOutcome(repository, error=str(error))
    return RepositoryOutcome(repository, snapshot_id=result.snapshot_id)
