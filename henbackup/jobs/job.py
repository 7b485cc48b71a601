"""What a job is: one operation of one backup (or repository) on one repository."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from henbackup.config.model import NORMAL, Priority
from henbackup.config.units import format_duration
from henbackup.engine.base import Engine, TransferProgress
from henbackup.errors import HenbackupError, JobCancelled
from henbackup.observe.events import EmitFunction, Emitter, Event, FieldValue, make_event

if TYPE_CHECKING:
    from henbackup.channel import Channel

T = TypeVar("T")
# job.progress comes every second, for progress bars; the journal keeps one in this many.
JOURNAL_PROGRESS_INTERVAL = 5.0


def new_job_id() -> str:
    """Short, unique enough on one host, and easy to type for `henbackupctl cancel`."""
    return os.urandom(4).hex()  # what secrets.token_hex(4) does, without importing hmac


@dataclass(frozen=True)
class Job:
    operation: str  # backup, restore, check, prune, forget, snapshots, init
    repository: str
    backup: str | None = None
    trigger: str = "manual"  # watch, schedule, manual, startup
    priority: Priority = NORMAL
    id: str = field(default_factory=new_job_id)
    ticket: str | None = None  # the queue ticket it runs under, when not its own (a forget)

    def fields(self) -> dict[str, FieldValue]:
        """The event fields that identify this job."""
        ticket = {"ticket": self.ticket} if self.ticket else {}
        return {
            "job": self.id,
            "operation": self.operation,
            "backup": self.backup,
            "repository": self.repository,
            "trigger": self.trigger,
            "priority": self.priority.effective,
            **ticket,
        }

    @property
    def title(self) -> str:
        """`pictures→aws-ireland`, or the repository alone for a repository job."""
        return f"{self.backup}→{self.repository}" if self.backup else self.repository


class ProgressReporter:
    """Turns engine progress into job.progress events, at most one per `interval` seconds.

    Often enough for a progress bar; the journal gets fewer (see `telling`).
    """

    def __init__(self, job: Job, emit: EmitFunction, interval: float = 1.0) -> None:
        self.job, self.emit, self.interval = job, emit, interval
        self._last = time.monotonic()

    def __call__(self, progress: TransferProgress) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        percent = round(progress.fraction * 100, 1)
        self.emit(
            "job.progress",
            f"{self.job.title}: {self.job.operation} {percent}%",
            **self.job.fields(),
            percent=percent,
            bytes_done=progress.bytes_done,
            total_bytes=progress.total_bytes,
            files_done=progress.files_done,
            total_files=progress.total_files,
            seconds_elapsed=round(progress.seconds_elapsed, 1),
            seconds_remaining=progress.seconds_remaining,
            bytes_sent=progress.bytes_sent,
            send_rate=None if progress.send_rate is None else round(progress.send_rate),
        )


class StallReporter:
    """Turns the engine's word that a run makes no progress into a job.stalled event."""

    def __init__(self, job: Job, emit: EmitFunction) -> None:
        self.job, self.emit = job, emit

    def __call__(self, seconds: float, doing: str) -> None:
        self.emit(
            "job.stalled",
            f"{self.job.title}: {self.job.operation} has made no progress for "
            f"{format_duration(round(seconds))}: {doing}",
            **self.job.fields(),
            stalled_sec=round(seconds, 1),
            error=doing,
        )


def run_job(
    job: Job,
    emit: EmitFunction,
    work: Callable[[], T],
    outcome: Callable[[T], tuple[str, dict[str, FieldValue]]] = lambda _: ("", {}),
    engine: Engine | None = None,
) -> T:
    """Run `work` between job.started and job.succeeded / job.failed / job.cancelled events.

    `outcome` turns the result into a message suffix and extra event fields. The stalls of
    `engine` while `work` runs are this job's job.stalled events. Returns what `work`
    returned; re-raises what it raised.
    """
    started = time.monotonic()
    emit("job.started", f"{job.title}: {job.operation} started", **job.fields(), pid=os.getpid())
    try:
        result = _reporting_stalls(engine, StallReporter(job, emit), work)
    except JobCancelled:
        emit("job.cancelled", f"{job.title}: {job.operation} cancelled", **job.fields())
        raise
    except HenbackupError as error:
        emit(
            "job.failed",
            f"{job.title}: {job.operation} failed: {error}",
            **job.fields(),
            duration_sec=time.monotonic() - started,
            error=str(error),
        )
        raise
    suffix, fields = outcome(result)
    emit(
        "job.succeeded",
        f"{job.title}: {job.operation} succeeded{suffix}",
        **job.fields(),
        duration_sec=time.monotonic() - started,
        **fields,
    )
    return result


def _reporting_stalls(engine: Engine | None, reporter: StallReporter, work: Callable[[], T]) -> T:
    if engine is None:
        return work()
    previous, engine.on_stall = engine.on_stall, reporter
    try:
        return work()
    finally:
        engine.on_stall = previous


def telling(news: Channel | None) -> EmitFunction:
    """Events to the journal (job.progress thinned out), and job and hook events to the
    parent on `news`."""
    if news is not None:  # a job process: `henbackup backup` has no parent to tell
        from henbackup.channel import JobEvent
    emit = Emitter()
    journaled: dict[str, float] = {}  # job id → when its progress was last journaled

    def tee(kind: str, message: str, **fields: FieldValue) -> Event:
        if news is not None and kind.startswith(("job.", "hook.")):
            news.send(JobEvent(kind, message, fields))
        if kind == "job.progress":
            now, job = time.monotonic(), str(fields.get("job"))
            if now - journaled.get(job, float("-inf")) < JOURNAL_PROGRESS_INTERVAL:
                return make_event(kind, message, **fields)  # not journaled
            journaled[job] = now
        return emit(kind, message, **fields)

    return tee
