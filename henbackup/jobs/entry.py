"""The bodies of job processes: a worker's run of its backup (or of a repository's check or
prune), and the one-off jobs the master starts for henbackupctl.

A job process tells its parent every job and hook event on its news channel (for STATUS=,
`henbackupctl status`, the metrics and the clients waiting for the job). SIGTERM stops the
whole run; SIGUSR1 cancels the job the scheduler marked cancelled (`henbackupctl cancel`).
Both handlers only record (this process may be inside a flock, a file write, an event): the
job acts on them at its safe point (`checkpoint`), which the engine calls every second while
restic runs, the queue as it waits (woken by the wakeup fd), hooks as they run, and the
pipeline between repositories.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from henbackup.channel import Channel, JobExit, OneOffResult
from henbackup.config.dirs import Dirs
from henbackup.config.model import IMMEDIATE, INFERIOR, Config, Priority
from henbackup.config.units import parse_priority
from henbackup.engine.engines import Engines, repository_engines
from henbackup.errors import (
    HenbackupError,
    JobCancelled,
    SnapshotNotFound,
    StopRequested,
    UnsafeTarget,
)
from henbackup.jobs.job import Job, telling
from henbackup.jobs.lanes import Lanes
from henbackup.jobs.maintenance import run_check, run_prune
from henbackup.jobs.pipeline import (
    Admitted,
    Place,
    RepositoryOutcome,
    back_up_to_repository,
    backup_jobs,
    queued,
    run_backup_pipeline,
)
from henbackup.jobs.restore import find_snapshot, run_restore
from henbackup.jobs.snapshots import run_snapshots, snapshot_row
from henbackup.limits import pause
from henbackup.limits.place import placed
from henbackup.observe.events import EmitFunction
from henbackup.process import NEVER, SafePoint
from henbackup.protocol import reply_error
from henbackup.scheduler.queue import PAUSE_MARKS, Grant, Scheduler

# A repository locked by a live process elsewhere (another host, an admin's restic) is
# waited for this long before the job fails; stale locks are removed at once.
LOCK_WAIT = 30 * 60.0


@dataclass(frozen=True)
class RunOptions:
    """How a run was asked for: by a trigger, or by hand with options."""

    trigger: str = "manual"  # watch, schedule, manual, startup
    repository: str | None = None  # only this repository
    priority: str | None = None  # overrides the configured priority
    read_data_subset: str | None = None  # check only

    @property
    def job_priority(self) -> Priority | None:
        return parse_priority(self.priority) if self.priority else None


_stop_asked = False  # SIGTERM came
_stopped = False  # and StopRequested was raised for it


def _note_stop(signum: int, frame: FrameType | None) -> None:
    # Only records, like _note_cancel: acted on at the next checkpoint.
    global _stop_asked
    _stop_asked = True


def honour_stop() -> None:
    """Raise StopRequested if SIGTERM came. Once: a second SIGTERM must not interrupt the
    clean stop of restic, nor the failure hooks."""
    global _stopped
    if _stop_asked and not _stopped:
        _stopped = True
        raise StopRequested("stopped by SIGTERM")


_cancel_asked = False  # SIGUSR1 came, and the queue was not asked since which job it meant
_cancelled: set[str] = set()  # the jobs already stopped by a cancel


def _note_cancel(signum: int, frame: FrameType | None) -> None:
    # Only records: this process may hold the queue lock right now (entering the queue,
    # polling its ticket, releasing a slot), and a handler that waited for it would wait on
    # itself for ever, and the whole host queue with it.
    global _cancel_asked
    _cancel_asked = True


def honour_cancel() -> None:
    """Raise JobCancelled if `henbackupctl cancel` marked a job of this process that runs now.

    Called where the process holds no queue lock (from `checkpoint`, the job's safe
    point). Only the job marked in the queue: by the time the signal came, this
    process may have moved on to its next repository, which nobody asked to cancel. Raised
    once per job: a second `cancel` must not interrupt the clean stop of restic.
    """
    global _cancel_asked
    if not _cancel_asked:
        return
    _cancel_asked = False  # before asking: a signal meanwhile is looked at next time
    job = host_scheduler().cancel_requested(os.getpid())
    if job is not None and job not in _cancelled:
        _cancelled.add(job)
        raise JobCancelled(f"job {job} cancelled by henbackupctl cancel")


def checkpoint() -> None:
    """The job's safe point: acts on a stop, then on a cancel (holds no queue lock)."""
    honour_stop()
    honour_cancel()


_safe_point = NEVER  # checkpoint, with the wakeup fd the handlers write to, once installed


def _handle_signals(fresh: bool = False) -> None:
    """Record SIGTERM and SIGUSR1; each also writes a byte to the wakeup fd (waits wake).
    `fresh`: a wakeup fd of its own (a lane: its parent's is not its own)."""
    global _safe_point
    if _safe_point is NEVER or fresh:
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        _safe_point = SafePoint(checkpoint, read_fd)
    signal.signal(signal.SIGTERM, _note_stop)
    signal.signal(signal.SIGUSR1, _note_cancel)


def _engine(config: Config) -> Engines:
    """The repository's engine, for every repository of a job."""
    dirs = Dirs.from_environment()
    marks = dirs.scheduler / PAUSE_MARKS
    return repository_engines(
        config.daemon,
        cache_dir=dirs.cache,
        lock_wait=LOCK_WAIT,
        checkpoint=checkpoint,
        stall_timeout=config.daemon.stall_timeout,
        paused=lambda: pause.marked(marks, os.getpid()),  # by the master: not a stall
    )


def host_scheduler() -> Scheduler:
    """The queue every job of this host goes through."""
    return Scheduler(Dirs.from_environment().scheduler, _safe_point)


def run_jobs(
    config: Config, kind: str, name: str, operation: str, options: RunOptions
) -> tuple[Job, ...]:
    """The jobs of one run a worker queues: backup `name`'s, one per repository (`kind`
    "backup"), or repository `name`'s check or prune (`operation`)."""
    if kind == "backup":
        return backup_jobs(config, name, options.trigger, options.repository, options.job_priority)
    settings = getattr(config.repositories[name], operation)  # its check or prune table
    priority = options.job_priority or (settings.priority if settings else INFERIOR)
    return (Job(operation, name, None, options.trigger, priority),)


def backup_job(
    config: Config,
    name: str,
    options: RunOptions,
    news: Channel | None,
    admitted: Admitted | None = None,
) -> JobExit:
    """Run backup `name`'s pipeline (`admitted`: as its worker queued it); returns how it
    ended."""
    _handle_signals()
    engine = _engine(config)
    relay = news.send if news is not None else lambda _: None
    try:
        with placed(name, config.backups[name].resources, telling(news)) as placement:
            scheduler = host_scheduler()
            lanes = Lanes(
                scheduler,
                placement.emit,
                relay,
                lambda job, grant, channel: _lane(config, job, grant, channel),
                _safe_point,
            )
            result = run_backup_pipeline(
                config,
                name,
                engine,
                placement.emit,
                options.trigger,
                scheduler,
                only=options.repository,
                priority=options.job_priority,
                safe_point=_safe_point,
                admitted=admitted,
                side_by_side=lanes,
            )
    except JobCancelled:
        return JobExit.CANCELLED
    return JobExit.FAILED if result.status == "failed" else JobExit.OK


def _lane(config: Config, job: Job, grant: Grant, parent: Channel) -> RepositoryOutcome:
    """A repository's job in a lane of its run (jobs/lanes.py): its own signals, engine
    and cgroup leaf (a pause, a memory kill, the usage are its own); raises JobCancelled
    when the whole run stops."""
    _handle_signals(fresh=True)
    backup = config.backups[job.backup or ""]
    with placed(backup.name, backup.resources, telling(parent)) as placement:
        place = Place(host_scheduler(), placement.emit, grant)
        try:
            outcome = back_up_to_repository(
                job, backup, config, _engine(config), placement.emit, place
            )
        finally:
            place.release()
    return RepositoryOutcome(
        outcome.repository, outcome.snapshot_id, placement.explain(outcome.error)
    )


def maintenance_job(
    config: Config,
    repository: str,
    operation: str,
    options: RunOptions,
    news: Channel | None,
    admitted: Admitted | None = None,
) -> int:
    """Run a repository's `operation` (check or prune; `admitted`: as its worker queued
    it); returns how it ended."""
    _handle_signals()
    if admitted is None:
        admitted = Admitted(run_jobs(config, "repository", repository, operation, options))
    (job,) = admitted.jobs
    settings = getattr(config.repositories[repository], operation)
    engine, resources = _engine(config), config.repositories[repository].resources
    subset = options.read_data_subset or getattr(settings, "read_data_subset", None)
    try:
        with (
            placed(repository, resources, telling(news), "repository") as placement,
            queued(job, host_scheduler(), placement.emit, admitted.grant),
        ):
            if operation == "check":
                run_check(job, config, engine, placement.emit, subset)
            else:
                run_prune(job, config, engine, placement.emit)
    except JobCancelled:
        return JobExit.CANCELLED
    except HenbackupError:
        return JobExit.FAILED
    return JobExit.OK


# One-off jobs: the master forks one per henbackupctl request that is not a backup.
# Each returns the reply's data; a HenbackupError makes a failed reply.
OneOffAction = Callable[[Config, dict[str, Any], EmitFunction], dict[str, Any]]


def _list_snapshots(config: Config, request: dict[str, Any], emit: EmitFunction) -> dict[str, Any]:
    """Every listed repository in turn; one that fails does not hide the others."""
    engine, rows, errors = _engine(config), [], []
    for repository in request["repositories"]:
        job = Job("snapshots", repository, request.get("backup"), "manual", IMMEDIATE)
        try:
            with queued(job, host_scheduler(), emit):
                rows += [
                    snapshot_row(s, repository) for s in run_snapshots(job, config, engine, emit)
                ]
        except StopRequested:
            raise
        except HenbackupError as error:
            errors.append(f"{repository}: {error}")
    rows.sort(key=lambda row: str(row["time"]), reverse=True)
    return {"snapshots": rows, "errors": errors}


def _restore(config: Config, request: dict[str, Any], emit: EmitFunction) -> dict[str, Any]:
    try:
        return _restore_into(config, request, emit)
    except BaseException:
        if not request.get("in_place"):  # the directory the master made for it: if empty
            with contextlib.suppress(OSError):
                os.rmdir(request["target"])
        raise


def _restore_into(config: Config, request: dict[str, Any], emit: EmitFunction) -> dict[str, Any]:
    engine, repository = _engine(config), request["repository"]
    snapshot = find_snapshot(config, engine, repository, request["snapshot"])
    priority = parse_priority(request.get("priority") or "normal")
    job = Job("restore", repository, snapshot.backup, "manual", priority)
    with queued(job, host_scheduler(), emit):
        result = run_restore(
            job,
            config,
            engine,
            emit,
            snapshot,
            request["target"],
            tuple(request["include"]),
            in_place=bool(request.get("in_place")),
        )
    return {
        "job": job.id,
        "snapshot": snapshot.id,
        "backup": snapshot.backup,
        "target": result.target,
        "target_existed": bool(request.get("target_existed")),
        "files_restored": result.files_restored,
        "bytes_restored": result.bytes_restored,
    }


ONE_OFFS: dict[str, OneOffAction] = {
    "list-snapshots": _list_snapshots,
    "restore-snapshot": _restore,
}


def one_off_job(config: Config, request: dict[str, Any], news: Channel) -> int:
    """Run one henbackupctl request; its reply goes on `news` as a "result" message."""
    command = request["command"]
    if command in ("check", "prune"):
        options = RunOptions(
            priority=request.get("priority"), read_data_subset=request.get("read_data_subset")
        )
        code = maintenance_job(config, request["repository"], command, options, news)
        news.send(OneOffResult({"ok": code == JobExit.OK, **_failure(code)}))  # why: its events
        return code
    _handle_signals()
    try:
        data = ONE_OFFS[command](config, request, telling(news))
    except JobCancelled as error:
        news.send(OneOffResult(reply_error("failed", str(error))))
        return JobExit.CANCELLED
    except (SnapshotNotFound, UnsafeTarget) as error:
        news.send(OneOffResult(reply_error("usage", str(error))))
        return JobExit.FAILED
    except HenbackupError as error:
        news.send(OneOffResult(reply_error("failed", str(error))))
        return JobExit.FAILED
    code = JobExit.FAILED if data.get("errors") else JobExit.OK
    news.send(OneOffResult({"ok": code == JobExit.OK, **data, **_failure(code, data)}))
    return code


def _failure(code: int, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The failed reply's code and reason (a job's own reason is in its job.failed event)."""
    if code == JobExit.OK:
        return {}
    errors = (data or {}).get("errors") or []
    reason = "; ".join(errors) or ("cancelled" if code == JobExit.CANCELLED else "")
    return {"code": "failed", "error": reason}
