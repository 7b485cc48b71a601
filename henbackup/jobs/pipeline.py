"""What one trigger of a backup does (henbackup.toml(5), TRIGGERS).

The worker waits for the first repository's turn in the host-wide queue and only then forks
the job process, handing it the grant (`Admitted`). So the `before` hooks run once the slot
is held, just before the first repository's backup (a database dump is fresh); then one job
per repository (a failing repository does not stop the others), with retention after a
successful backup; then the `after` hooks, or the `failure` hooks when anything failed.
In a job process the repositories' jobs run side by side as slots allow (jobs/lanes.py),
each in a child process with its own turn in the queue and its own stall deadline: one
whose backend is down fails alone. Elsewhere (`henbackup backup`) they run in turn. The
run keeps its place from one repository to the next (`Place`): the next repository's ticket
has the run's arrival number (in turn: replacing the one that ran, in one turn of the
queue's lock). A
before hook that stops the run fails every job it kept from starting (a job.failed each,
naming the hook), so that status, metrics and the journal count the run as failed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
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
from henbackup.scheduler.queue import Grant, Scheduler
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


@dataclass(frozen=True)
class Admitted:
    """What a worker hands the job process it forked at its run's turn: the run's jobs (in
    order; their ids already told in events), the grant of the first one left to run, and
    the repositories whose jobs were cancelled while they waited in the worker."""

    jobs: tuple[Job, ...]
    grant: Grant | None = None
    cancelled: tuple[str, ...] = ()


def ticket_for(job: Job, sequence: int = 0) -> Ticket:
    """The queue ticket of `job`; `sequence`: the arrival it keeps (0: a new one)."""
    return Ticket(
        job.id,
        job.repository,
        job.priority,
        mode_for(job.operation),
        job.operation,
        job.backup,
        sequence=sequence,
    )


def announce_queued(job: Job, position: int, stamped: Ticket, emit: EmitFunction) -> None:
    """The job.queued event of `job`, waiting at `position` with its ticket as stamped."""
    message = f"{job.title}: {job.operation} queued, position {position}"
    place = {"sequence": stamped.sequence, "queued_at": stamped.queued_at}
    emit("job.queued", message, **job.fields(), position=position, pid=stamped.pid, **place)


def announce_cancelled(job: Job, emit: EmitFunction) -> None:
    emit("job.cancelled", f"{job.title}: {job.operation} cancelled", **job.fields())


class Place:
    """A run's place in the host-wide queue, kept from one job to the next.

    Starts with the grant its worker handed over (made this process's own here), if any.
    Each job's block runs under a grant that stays held after it: the next job's ticket
    replaces it (same arrival number, one turn of the lock), so that the run keeps its
    place; `release()` when the run has no more jobs.
    """

    def __init__(self, scheduler: Scheduler | None, emit: EmitFunction, grant: Grant | None):
        self.scheduler, self.emit, self.grant = scheduler, emit, grant
        self.sequence = grant.ticket.sequence if grant is not None else 0
        self._cancelled_early = grant is not None and grant.adopt()

    @contextlib.contextmanager
    def queued(self, job: Job) -> Iterator[None]:
        """Hold `job`'s turn (a slot, its repository) for the block; raises JobCancelled
        (after its job.cancelled) when it is cancelled while it waits."""
        if self.scheduler is None:
            yield
            return
        if self.grant is not None and self.grant.ticket.job_id == job.id:
            if self._cancelled_early:
                announce_cancelled(job, self.emit)
                raise JobCancelled(f"job {job.id} was cancelled before it started")
        else:
            self.grant = self._wait(job, self.scheduler)
        yield

    def take_grant(self, job: Job) -> Grant | None:
        """The grant held for `job`, now the caller's (None: it holds none for it); raises
        JobCancelled (after its job.cancelled) when it was cancelled before it started."""
        if self.grant is None or self.grant.ticket.job_id != job.id:
            return None
        grant, self.grant = self.grant, None
        if self._cancelled_early:
            grant.release()
            announce_cancelled(job, self.emit)
            raise JobCancelled(f"job {job.id} was cancelled before it started")
        return grant

    def _wait(self, job: Job, scheduler: Scheduler) -> Grant:
        replacing, self.grant = self.grant, None
        waiter = scheduler.submit(ticket_for(job, self.sequence), replacing=replacing)
        self.sequence = self.sequence or waiter.ticket.sequence
        try:
            if waiter.grant is None:
                announce_queued(job, waiter.position() or 1, waiter.ticket, self.emit)
            return waiter.wait()
        except JobCancelled:  # cancelled (or the daemon stopping) while it waited
            waiter.cancel()
            announce_cancelled(job, self.emit)
            raise
        except BaseException:
            waiter.cancel()
            raise

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        if self.grant is not None:
            self.grant.release()
            self.grant = None


# Runs a run's jobs side by side from `place` (jobs/lanes.py); returns their outcomes, in
# the jobs' order.
SideBySide = Callable[[Sequence[Job], Place], list["RepositoryOutcome"]]


@contextlib.contextmanager
def queued(
    job: Job, scheduler: Scheduler | None, emit: EmitFunction, grant: Grant | None = None
) -> Iterator[None]:
    """Hold the job's place (a slot, its repository) in the host-wide queue for the block;
    `grant`: the one its worker handed over, instead of waiting."""
    place = Place(scheduler, emit, grant)
    try:
        with place.queued(job):
            yield
    finally:
        place.release()


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
    admitted: Admitted | None = None,
    side_by_side: SideBySide | None = None,
) -> PipelineResult:
    """Hooks around one backup job per repository; returns every repository's outcome.

    `only` restricts the run to one of the backup's repositories; `priority` overrides the
    configured one (both for runs asked by hand). `safe_point` is where the job process
    acts on its signals: hooks and the time between repositories. `admitted`: the run as
    its worker queued it (the jobs, the first one's grant, those cancelled meanwhile).
    `side_by_side`: how several repositories' jobs run at once, as slots allow (else here,
    in turn).
    """
    backup = config.backups[name]
    if admitted is None:
        admitted = Admitted(backup_jobs(config, name, trigger, only, priority))
    outcomes = [RepositoryOutcome(r, error="cancelled") for r in admitted.cancelled]
    left = admitted.jobs[len(admitted.cancelled) :]
    place = Place(scheduler, emit, admitted.grant)

    def in_turn(jobs: Sequence[Job], place: Place) -> list[RepositoryOutcome]:
        done = []
        for job in jobs:
            if safe_point is not None:
                safe_point.check()
            done.append(back_up_to_repository(job, backup, config, engine, emit, place))
        return done

    run_jobs: SideBySide = in_turn
    if side_by_side is not None and scheduler is not None and len(left) > 1:
        run_jobs = side_by_side

    def jobs() -> str | None:
        try:
            outcomes.extend(run_jobs(left, place))
        finally:
            place.release()
        reasons = [f"{o.repository}: {o.error}" for o in outcomes if o.error is not None]
        return "; ".join(reasons) or None

    first = left[0].id if left else None  # the run's id (HENBACKUP_JOB), as its first job's
    context = HookContext(name, "before", first, trigger, host=config.daemon.hostname)
    runner = functools.partial(run_hook, safe_point=safe_point)
    try:
        result = run_with_hooks(backup.hooks, context, emit, jobs, runner)
    finally:
        place.release()  # a before hook that stopped the run: the slot is not kept
    if result.before.stop:
        error = f"before hook {result.before.error}"
        for job in left:
            outcomes.append(_stopped_by_hook(job, error, emit))
    return PipelineResult(result.status, tuple(outcomes), result.error)


def backup_jobs(
    config: Config,
    name: str,
    trigger: str,
    only: str | None = None,
    priority: Priority | None = None,
) -> tuple[Job, ...]:
    """The jobs of one run of backup `name`: one per repository (`only`: that one)."""
    backup = config.backups[name]
    repositories = [only] if only else backup.repositories
    return tuple(
        Job("backup", repository, name, trigger, priority or backup.priority)
        for repository in repositories
    )


def _stopped_by_hook(job: Job, error: str, emit: EmitFunction) -> RepositoryOutcome:
    """A job a failing before hook kept from starting: it failed (its status, its metrics,
    `journalctl HENBACKUP_EVENT=job.failed` must say so), with the hook's reason."""
    message = f"{job.title}: {job.operation} failed: {error} (the run stopped)"
    emit("job.failed", message, **job.fields(), error=error)
    return RepositoryOutcome(job.repository, error=error)


def back_up_to_repository(
    job: Job,
    backup: Backup,
    config: Config,
    engine: Engine,
    emit: EmitFunction,
    place: Place,
) -> RepositoryOutcome:
    """Back up to one repository (then forget by the retention), at its turn in `place`.

    Never raises but StopRequested: a job cancelled alone lets the next repository's run.
    """
    repository = job.repository
    try:
        with place.queued(job):
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
