"""A backup's worker: its own selector loop, its triggers, and one job process at a time.

The worker never runs restic itself: each run is a forked job process, so the loop stays
free for heartbeats, triggers and SIGTERM while a backup takes hours. A trigger that comes
while a run is in progress leaves exactly one follow-up run.

A run waits for its turn in the host-wide queue here, as a ticket and a FIFO in this loop
(scheduler/queue.py), not as a process: the job process is forked when the slot is granted,
and takes the grant over (200 backups due at once cost 200 tickets, and as many job
processes as there are slots). A job process that cannot be forked fails the run's jobs
with a job.failed each, and so does one that dies before it said anything (a crash at its
start: never silence); one that dies before it took its ticket over leaves no ticket
behind (`Scheduler.forget_own`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace

from henbackup import names
from henbackup.channel import (
    Accepted,
    Channel,
    ChannelMessage,
    Heartbeat,
    JobEvent,
    JobExit,
    JobState,
    Ready,
    Refused,
    StartRun,
    WatchNews,
)
from henbackup.config.dirs import Dirs
from henbackup.config.model import Config
from henbackup.errors import HenbackupError, QueueBusy
from henbackup.jobs import entry
from henbackup.jobs.job import Job
from henbackup.jobs.pipeline import Admitted, announce_cancelled, announce_queued, ticket_for
from henbackup.loop import Loop, Timer
from henbackup.observe.events import EmitFunction, Emitter, FieldValue
from henbackup.process import Watched, describe_exit, start_watched
from henbackup.scheduler.queue import BUSY_RETRY, Grant, Scheduler, Waiter
from henbackup.worker.spec import WorkerSpec
from henbackup.worker.triggers import Triggers, backup_triggers, maintenance_triggers
from henbackup.worker.watching import watcher_main

HEARTBEAT_INTERVAL = 10.0
# The requests one run follows: each of its job events carries them all, so unbounded, a
# line would grow with every ask (up to the channel's MAX_LINE) and cost the worker. 64 waiting
# clients on one backup's run is beyond any real use, and their ids fit in under 1 KiB.
MAX_FOLLOWED = 64
# Runs asked by hand that wait for the current one, each of another repository or priority:
# unbounded, a flood of asks of distinct priorities would queue a backup for each.
MAX_WAITING = 16


@dataclass(frozen=True)
class RunRequest:
    trigger: str  # watch, schedule, manual, startup
    reason: str
    operation: str = "backup"  # a repository worker runs check or prune
    repository: str | None = None  # asked by hand: only this repository
    priority: str | None = None  # asked by hand: instead of the configured one
    requests: tuple[str, ...] = ()  # the control requests waiting for this run's end

    def same_run(self, other: RunRequest) -> bool:
        """Whether one run answers both (so a second ask waits for the same run)."""
        return (self.operation, self.repository, self.priority) == (
            other.operation,
            other.repository,
            other.priority,
        )


# Runs in the job process, telling its progress on the channel; returns its exit code.
# Admitted: the run as the worker queued it (None without a queue).
JobBody = Callable[[Config, WorkerSpec, RunRequest, Channel, Admitted | None], int]


class Worker:
    def __init__(
        self,
        spec: WorkerSpec,
        config: Config,
        channel: Channel,
        emit: EmitFunction,
        job_body: JobBody,
        scheduler: Scheduler | None = None,
        triggers: Callable[[Worker], Triggers] | None = None,
        loop: Loop | None = None,
    ) -> None:
        self.spec, self.config, self.channel, self.emit = spec, config, channel, emit
        self.job_body = job_body
        self.loop = loop or Loop()
        self.scheduler = scheduler
        self.triggers = triggers(self) if triggers else None
        self.current: RunRequest | None = None  # the run in progress: queued or running
        self.jobs: tuple[Job, ...] = ()  # its jobs, when it goes through the queue
        self.cancelled: tuple[str, ...] = ()  # repositories whose job was cancelled waiting
        self.waiter: Waiter | None = None  # while its next job waits for its turn
        self.entering: Timer | None = None  # while its next job retries entering a busy queue
        self.granted: Grant | None = None  # the grant handed to the job process
        self.job: Watched | None = None  # the job process, telling its events
        self.heard_from_job = False  # it sent an event: it started
        self.pending: list[RunRequest] = []  # runs asked by hand during a run, in order
        self.stopping = False

    def run(self) -> int:
        """Serve until SIGTERM (or the master going away); returns the exit code."""
        self.loop.on_signal(signal.SIGTERM, self.shutdown)
        self.loop.on_signal(signal.SIGINT, self.shutdown)
        # `henbackupctl cancel` signals a running ticket's owner: until the job process
        # adopts its grant, that is this worker. Ignored here; the job process finds the
        # cancel marked in the queue when it adopts the ticket.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self.loop.add_reader(self.channel.fileno(), self._on_messages)
        self._heartbeat()
        self.channel.send(Ready())
        if self.triggers is not None:
            self.triggers.start()
            self._send_state("idle")
        self.loop.run()
        return 0

    def _heartbeat(self) -> None:
        self.channel.send(Heartbeat())
        self.loop.call_later(HEARTBEAT_INTERVAL, self._heartbeat)

    def _on_messages(self) -> None:
        messages = self.channel.receive(lambda error: self._malformed("the master", error))
        if messages is None:  # the master is gone: nothing left to report to
            self.shutdown()
            return
        for message in messages:
            if isinstance(message, WatchNews) and self.triggers is not None:
                self.triggers.watch_news(message.changes, message.overflow, message.limit)
            elif isinstance(message, StartRun):
                self.request(
                    RunRequest(
                        "manual",
                        "asked through the control socket",
                        message.operation,
                        message.repository,
                        message.priority,
                        message.requests,
                    )
                )

    def _malformed(self, source: str, error: Exception) -> None:
        """A message of the wrong shape: said, and skipped."""
        self.emit(
            "daemon.error",
            f"{self.spec.name}: a message from {source} was skipped: {error}",
            source=f"worker {self.spec.name}",
            error=str(error),
            **{self.spec.kind: self.spec.name},
        )

    def request(self, run: RunRequest) -> None:
        """A trigger fired: start a run now, or (asked by hand) once the current one ends.

        A schedule or watch trigger during a run is dropped without an event: the triggers
        re-arm when the run ends, and a change seen meanwhile gets its own run then.
        """
        if self.stopping or (self.current is not None and run.trigger != "manual"):
            return
        self.emit(
            "trigger.fired",
            f"{self.spec.name}: {run.operation} on {run.trigger} ({run.reason})",
            trigger=run.trigger,
            reason=run.reason,
            operation=run.operation,
            **{self.spec.kind: self.spec.name},
        )
        if self.current is None:
            self._start(run)
            return
        for index, waiting in enumerate(self.pending):
            if waiting.same_run(run):
                self.pending[index] = self._merged(waiting, run)
                return
        if len(self.pending) >= MAX_WAITING:
            why = f"{self.spec.name}: {MAX_WAITING} runs asked by hand already wait; ask later"
            self.channel.send(Refused(why, run.requests))
            return
        self.pending.append(run)

    def _merged(self, waiting: RunRequest, run: RunRequest) -> RunRequest:
        """`waiting`, following `run`'s requests too up to MAX_FOLLOWED; the master answers
        the others at once (the run still comes: merged, they asked for nothing more)."""
        room = max(MAX_FOLLOWED - len(waiting.requests), 0)
        if len(run.requests) > room:
            self.channel.send(Accepted(run.operation, run.requests[room:]))
        return replace(waiting, requests=waiting.requests + run.requests[:room])

    def _start(self, run: RunRequest) -> None:
        if self.triggers is not None:
            self.triggers.job_started(run.operation)
        self.current = run
        self._send_state("running", operation=run.operation)
        self.jobs, self.cancelled, self.granted = self._jobs_of(run), (), None
        if self.scheduler is None or not self.jobs:
            try:
                self._fork(run, None)
            except OSError as error:  # EAGAIN, ENOMEM, EMFILE: no process, and no silence
                self._failed_to_start(f"its job process could not start: {error}")
        else:
            self._queue_next(self.scheduler)

    def _jobs_of(self, run: RunRequest) -> tuple[Job, ...]:
        """The run's jobs; () when they cannot be named here (the job process then says
        why, as it fails). ValueError: a priority it cannot read fails that run, never the
        worker."""
        options = entry.RunOptions(run.trigger, run.repository, run.priority)
        try:
            return entry.run_jobs(
                self.config, self.spec.kind, self.spec.name, run.operation, options
            )
        except (HenbackupError, KeyError, AttributeError, ValueError):
            return ()

    def _queue_next(self, scheduler: Scheduler) -> None:
        """Queue the run's first job not cancelled; its turn forks the job process."""
        self.entering = None
        job = self.jobs[len(self.cancelled)]
        try:
            waiter = scheduler.request(
                self.loop,
                ticket_for(job),
                self._granted,
                self._cancelled_waiting,
                wait=False,
                on_failed=self._failed_waiting,
            )
        except QueueBusy:  # another process holds the queue (stopped, maybe): never wait here
            self.entering = self.loop.call_later(BUSY_RETRY, lambda: self._queue_next(scheduler))
            return
        except (OSError, ValueError) as error:  # a full disk, a removed directory
            self._failed_to_start(f"it could not enter the job queue: {error}")
            return
        self.waiter = waiter
        if waiter.grant is None:
            announce_queued(job, waiter.position() or 1, waiter.ticket, self._tell)

    def _cancelled_waiting(self) -> None:
        """`henbackupctl cancel` withdrew the waiting job: the next repository's goes on."""
        job = self.jobs[len(self.cancelled)]
        self.waiter = None
        announce_cancelled(job, self._tell)
        self.cancelled += (job.repository,)
        if len(self.cancelled) == len(self.jobs) or self.scheduler is None:
            self._run_ended(JobExit.CANCELLED)
        else:
            self._queue_next(self.scheduler)

    def _failed_waiting(self, error: OSError) -> None:
        """Its turn came, but the queue could not be written (a full /run)."""
        self.waiter = None
        self._failed_to_start(f"it could not take its turn in the job queue: {error}")

    def _granted(self, grant: Grant) -> None:
        """The run's turn: fork its job process, which takes the grant over."""
        assert self.current is not None
        self.waiter = None
        run, admitted = self.current, Admitted(self.jobs, grant, self.cancelled)
        try:
            grant.handed_to_child(lambda: self._fork(run, admitted))
        except OSError as error:  # EAGAIN, ENOMEM, EMFILE: no process, and no silence
            grant.release(wait=False)
            self._failed_to_start(f"its job process could not start: {error}")
            return
        self.granted = grant

    def _fork(self, run: RunRequest, admitted: Admitted | None) -> None:
        self.heard_from_job = False
        self.job = start_watched(  # the child closes the loop's fds: channel, inotify, timers
            self.loop,
            names.job_title(self.spec.name),
            lambda news: self.job_body(self.config, self.spec, run, news, admitted),
            heard=self._forward,
            exited=self._job_exited,
            malformed=lambda error: self._malformed("its job process", error),
        )

    def _failed_to_start(self, error: str, code: int = JobExit.FAILED) -> None:
        """The run could not start: each of its jobs left failed (a job.failed each)."""
        for job in self.jobs[len(self.cancelled) :]:
            message = f"{job.title}: {job.operation} failed: {error}"
            self._tell("job.failed", message, **job.fields(), error=error)
        self._run_ended(code)

    def _tell(self, kind: str, message: str, **fields: FieldValue) -> None:
        """A job event of the worker's own: to the journal, and to the master."""
        self.emit(kind, message, **fields)
        requests = self.current.requests if self.current is not None else ()
        self.channel.send(JobEvent(kind, message, fields, requests))

    def _forward(self, messages: list[ChannelMessage]) -> None:
        """The job process's events: forwarded to the master, with who waits for them."""
        assert self.current is not None
        for message in messages:
            if isinstance(message, JobEvent):
                self.heard_from_job = True
                self.channel.send(replace(message, requests=self.current.requests))

    def _job_exited(self, status: int) -> None:
        assert self.job is not None and self.current is not None
        self.job = None
        code = os.waitstatus_to_exitcode(status)
        if self.scheduler is not None:
            if self.granted is not None:  # died before it took its ticket over?
                self.scheduler.forget_own(self.granted.ticket.job_id, self.loop)
            if not JobExit.orderly(code):  # see Scheduler.nudge: it may have held its slot
                self.scheduler.nudge()
        if not self.heard_from_job and not JobExit.orderly(code):  # crashed at its start
            self._failed_to_start(f"its job process {describe_exit(code)} as it started", code)
            return
        self._run_ended(code)

    def _run_ended(self, code: int) -> None:
        finished, self.current = self.current, None
        assert finished is not None
        self.jobs, self.cancelled, self.granted = (), (), None
        if self.triggers is not None:
            ok = code == JobExit.OK
            self.triggers.job_finished(finished.operation, ok, stopping=self.stopping)
        self._send_state("idle", exit=code, requests=finished.requests)
        if self.stopping:
            self.loop.stop()
        elif self.pending:
            self._start(self.pending.pop(0))

    def _send_state(
        self,
        state: str,
        operation: str | None = None,
        exit: int = JobExit.OK,
        requests: tuple[str, ...] = (),
    ) -> None:
        next_run = self.triggers.next_run() if self.triggers else None
        self.channel.send(JobState(state, next_run, operation, exit, requests))

    def shutdown(self) -> None:
        """Stop: interrupt the running job cleanly (it stops restic), then leave the loop."""
        self.stopping = True
        self.pending.clear()  # the master answers their requests: the worker is stopping
        if self.job is not None:
            os.kill(self.job.pid, signal.SIGTERM)
        elif self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            told = waiter.grant is None  # else granted at once: never announced
            waiter.cancel(self.loop)
            if told:
                announce_cancelled(self.jobs[len(self.cancelled)], self._tell)
            self._run_ended(JobExit.CANCELLED)
        elif self.entering is not None:  # its run waits to enter the queue: it never will
            self.entering.cancel()
            self.entering = None
            self._run_ended(JobExit.CANCELLED)
        elif self.current is None:
            self.loop.stop()


def run_job_body(
    config: Config, spec: WorkerSpec, run: RunRequest, news: Channel, admitted: Admitted | None
) -> int:
    """The job process: the backup pipeline, or a repository's check or prune."""
    options = entry.RunOptions(run.trigger, run.repository, run.priority)
    if spec.kind == "backup":
        return entry.backup_job(config, spec.name, options, news, admitted)
    return entry.maintenance_job(config, spec.name, run.operation, options, news, admitted)


def worker_main(spec: WorkerSpec, config: Config, channel: Channel) -> int:
    """The body of a forked worker process (or of the watcher, watching.py)."""
    if spec.kind == "watcher":
        return watcher_main(config, channel)
    dirs, emit = Dirs.from_environment(), Emitter()

    def triggers(worker: Worker) -> Triggers:
        def request(trigger: str, reason: str, operation: str) -> None:
            worker.request(RunRequest(trigger, reason, operation))

        if spec.kind == "backup":
            return backup_triggers(
                config.backups[spec.name], worker.loop, dirs.state, emit, request
            )
        repository = config.repositories[spec.name]
        return maintenance_triggers(repository, worker.loop, dirs.state, emit, request)

    scheduler = Scheduler(dirs.scheduler)
    worker = Worker(
        spec, config, channel, emit, run_job_body, scheduler=scheduler, triggers=triggers
    )
    return worker.run()
