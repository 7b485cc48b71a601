"""The body of a job process: what a worker's forked child runs for one trigger."""

from __future__ import annotations

import signal
from types import FrameType

from henbackup.channel import Channel
from henbackup.config.dirs import Dirs
from henbackup.config.model import INFERIOR, Config
from henbackup.engine.restic import ResticEngine
from henbackup.errors import HenbackupError, JobCancelled
from henbackup.jobs.job import Job
from henbackup.jobs.maintenance import run_check, run_prune
from henbackup.jobs.pipeline import queued, run_backup_pipeline
from henbackup.master.specs import WorkerSpec
from henbackup.observe.events import EmitFunction, Emitter, Event, FieldValue
from henbackup.scheduler.queue import Scheduler

JOB_OK, JOB_FAILED, JOB_CANCELLED = 0, 1, 3


def _cancel(signum: int, frame: FrameType | None) -> None:
    # Raised once, wherever the job is: the engine then interrupts restic cleanly. A second
    # SIGTERM must not interrupt that clean-up.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise JobCancelled(f"stopped by {signal.Signals(signum).name}")


# A repository locked by a live process elsewhere (another host, an admin's restic) is
# waited for this long before the job fails; stale locks are removed at once.
LOCK_WAIT = 30 * 60.0


def _engine(config: Config) -> ResticEngine:
    cache = Dirs.from_environment().cache
    return ResticEngine(config.daemon.restic, cache_dir=cache, lock_wait=LOCK_WAIT)


def host_scheduler() -> Scheduler:
    """The queue every job of this host goes through."""
    return Scheduler(Dirs.from_environment().scheduler)


def telling(news: Channel | None) -> EmitFunction:
    """Events to the journal, and the job events also to the worker (for STATUS=)."""
    emit = Emitter()
    if news is None:
        return emit

    def tee(kind: str, message: str, **fields: FieldValue) -> Event:
        event = emit(kind, message, **fields)
        if kind in ("job.queued", "job.started", "job.progress"):
            keep = ("operation", "backup", "repository", "percent")
            news.send({"type": kind, **{k: fields.get(k) for k in keep}})
        return event

    return tee


def backup_job(config: Config, spec: WorkerSpec, trigger: str, news: Channel | None) -> int:
    """Run the backup pipeline of `spec`; returns JOB_OK, JOB_FAILED or JOB_CANCELLED."""
    signal.signal(signal.SIGTERM, _cancel)
    engine, emit = _engine(config), telling(news)
    try:
        result = run_backup_pipeline(config, spec.name, engine, emit, trigger, host_scheduler())
    except JobCancelled:
        return JOB_CANCELLED
    return JOB_FAILED if result.status == "failed" else JOB_OK


def maintenance_job(
    config: Config, spec: WorkerSpec, operation: str, trigger: str, news: Channel | None
) -> int:
    """Run a repository's `operation` (check or prune); returns a JOB_* code."""
    signal.signal(signal.SIGTERM, _cancel)
    repository = config.repositories[spec.name]
    settings = repository.check if operation == "check" else repository.prune
    priority = settings.priority if settings else INFERIOR
    job = Job(operation, spec.name, None, trigger, priority)
    engine, emit = _engine(config), telling(news)
    try:
        with queued(job, host_scheduler(), emit):
            if operation == "check":
                subset = settings.read_data_subset if settings else None
                run_check(job, config, engine, emit, subset)
            else:
                run_prune(job, config, engine, emit)
    except JobCancelled:
        return JOB_CANCELLED
    except HenbackupError:
        return JOB_FAILED
    return JOB_OK
