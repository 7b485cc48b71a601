"""A backup run's repositories side by side: one child process per repository job.

The job process queues its run's jobs one after the other, each with the run's arrival
number (the run keeps its place), the next as soon as the one before is granted: with
free slots they all run at once, with one they run in turn, in order. Each granted job
runs in a child of its own (a "lane"), which takes the grant over: there its engine
watches its restic with its own stall deadline (a repository whose backend is down fails
alone, after `stall_timeout`), `henbackupctl cancel` and the master's pauses reach it by
its pid (the ticket's, and its job.started's), and its programs get a cgroup leaf of their
own (a pause freezes that repository's restic only).

This process waits in one selector loop for the grants, the lanes' events (relayed to
its parent as they come) and their ends. A SIGTERM is passed on to the lanes; the run
then waits for them to stop cleanly, and the stop goes on up (the failure hooks run).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Sequence

from henbackup import names
from henbackup.channel import Channel, ChannelMessage, JobEvent, JobExit, OneOffResult
from henbackup.errors import JobCancelled, ProtocolError, QueueBusy, StopRequested
from henbackup.jobs.job import Job
from henbackup.jobs.pipeline import (
    Place,
    RepositoryOutcome,
    announce_cancelled,
    announce_queued,
    ticket_for,
)
from henbackup.loop import Loop, Timer
from henbackup.observe.events import EmitFunction
from henbackup.process import NEVER, SafePoint, Watched, describe_exit, start_watched
from henbackup.protocol import reply_error
from henbackup.scheduler.queue import BUSY_RETRY, Grant, Scheduler, Waiter

# In the lane: run `job` under `grant` (telling its events on the channel); its outcome.
LaneBody = Callable[[Job, Grant, Channel], RepositoryOutcome]


class Lanes:
    """Runs a run's jobs side by side (a pipeline's `SideBySide`)."""

    def __init__(
        self,
        scheduler: Scheduler,
        emit: EmitFunction,
        relay: Callable[[JobEvent], object],
        body: LaneBody,
        safe_point: SafePoint = NEVER,
    ) -> None:
        self.scheduler, self.emit, self.relay, self.body = scheduler, emit, relay, body
        self.safe_point = safe_point
        self.loop = Loop()  # each run's own (closed at its end)
        self.todo: list[Job] = []  # not queued yet (the first of them may be waiting)
        self.waiter: Waiter | None = None  # the first of `todo`'s ticket
        self.entering: Timer | None = None  # while that one retries entering a busy queue
        self.running: dict[str, Watched] = {}  # job id → its lane
        self.outcomes: dict[str, RepositoryOutcome] = {}
        self.sequence = 0
        self.stopping = False

    def __call__(self, jobs: Sequence[Job], place: Place) -> list[RepositoryOutcome]:
        self.loop, self.todo, self.sequence = Loop(), list(jobs), place.sequence
        if self.safe_point.fd is not None:  # before any fork: a lane closes the loop's fds
            self.loop.add_reader(self.safe_point.fd, self._woken)
        first = self.todo[0]
        try:
            grant = place.take_grant(first)
        except JobCancelled:
            self.todo.pop(0)
            self.outcomes[first.id] = RepositoryOutcome(first.repository, error="cancelled")
            grant = None
        if grant is not None:
            self._start(self.todo.pop(0), grant)
        self._queue_next()
        try:
            self._serve()
        except BaseException:  # a stop: the lanes stop cleanly first
            self._stop()
            raise
        finally:
            self.loop.close()
        return [self.outcomes[job.id] for job in jobs if job.id in self.outcomes]

    def _serve(self) -> None:
        while self.running or self.waiter is not None or self.entering is not None:
            self.loop.run_once()

    def _woken(self) -> None:
        """A signal came: a stop ends the run (StopRequested, out of the loop)."""
        try:
            self.safe_point.woken()
        except StopRequested:
            raise
        except JobCancelled:
            pass  # a cancel is of a lane's job (each lane owns its ticket): the lane's to act on

    def _stop(self) -> None:
        self.stopping = True
        if self.safe_point.fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.loop.remove_reader(self.safe_point.fd)
        if self.entering is not None:  # not in the queue yet: it never will be
            self.entering.cancel()
            self.entering = None
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            told = waiter.grant is None  # else granted at once: never announced
            waiter.cancel(self.loop)
            if told:
                announce_cancelled(self.todo[0], self.emit)
        for lane in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(lane.pid, signal.SIGTERM)
        while self.running:
            self.loop.run_once()

    def _queue_next(self) -> None:
        """Queue the first job not queued yet, with the run's arrival number; while another
        process holds the queue's lock, try again from a timer (never wait for it)."""
        self.entering = None
        if not self.todo or self.waiter is not None or self.stopping:
            return
        job = self.todo[0]
        try:
            waiter = self.scheduler.request(
                self.loop,
                ticket_for(job, self.sequence),
                self._granted,
                self._cancelled,
                wait=False,
                on_failed=self._failed_waiting,
            )
        except QueueBusy:
            self.entering = self.loop.call_later(BUSY_RETRY, self._queue_next)
            return
        except (OSError, ValueError) as error:  # a full disk, a removed directory
            self._failed(self.todo.pop(0), f"it could not enter the job queue: {error}")
            self._queue_next()
            return
        self.waiter, self.sequence = waiter, self.sequence or waiter.ticket.sequence
        if waiter.grant is None:
            announce_queued(job, waiter.position() or 1, waiter.ticket, self.emit)

    def _granted(self, grant: Grant) -> None:
        self.waiter = None
        self._start(self.todo.pop(0), grant)
        self._queue_next()

    def _cancelled(self) -> None:
        """`henbackupctl cancel` withdrew the waiting job: the next one is queued."""
        self.waiter = None
        job = self.todo.pop(0)
        announce_cancelled(job, self.emit)
        self.outcomes[job.id] = RepositoryOutcome(job.repository, error="cancelled")
        self._queue_next()

    def _failed_waiting(self, error: OSError) -> None:
        """Its turn came, but the queue could not be written (a full /run)."""
        self.waiter = None
        self._failed(self.todo.pop(0), f"it could not take its turn in the job queue: {error}")
        self._queue_next()

    def _start(self, job: Job, grant: Grant) -> None:
        """Fork `job`'s lane, which takes `grant` over."""

        def lane(channel: Channel) -> int:
            try:
                outcome = self.body(job, grant, channel)
            except JobCancelled:  # the whole run stops: said by its job.cancelled
                outcome = RepositoryOutcome(job.repository, error="stopped")
            said = {"ok": True} if outcome.error is None else reply_error("failed", outcome.error)
            channel.send(OneOffResult({**said, "snapshot_id": outcome.snapshot_id}))
            return 0

        def start() -> Watched:
            return start_watched(
                self.loop,
                names.job_title(f"{job.backup}/{job.repository}"),  # comm: ASCII
                lane,
                heard=lambda messages: self._heard(job, messages),
                exited=lambda status: self._exited(job, status),
                malformed=lambda error: self._malformed(job, error),
            )

        try:
            self.running[job.id] = grant.handed_to_child(start)
        except OSError as error:  # EAGAIN, ENOMEM, EMFILE: no process, and no silence
            grant.release(wait=False)
            self._failed(job, f"its process could not start: {error}")

    def _heard(self, job: Job, messages: list[ChannelMessage]) -> None:
        for message in messages:
            if isinstance(message, JobEvent):
                self.relay(message)
            elif isinstance(message, OneOffResult):
                said = message.reply
                self.outcomes[job.id] = RepositoryOutcome(
                    job.repository, said.get("snapshot_id"), said.get("error")
                )

    def _malformed(self, job: Job, error: ProtocolError) -> None:
        message = f"{job.title}: a message from its process was skipped: {error}"
        self.emit("daemon.error", message, source=f"lane {job.title}", error=str(error))

    def _exited(self, job: Job, status: int) -> None:
        del self.running[job.id]
        self.scheduler.forget_own(job.id, self.loop)  # it died before it took its ticket over?
        code = os.waitstatus_to_exitcode(status)
        if not JobExit.orderly(code):  # see Scheduler.nudge: it may have held its slot
            self.scheduler.nudge()
        if job.id not in self.outcomes:  # it died without a word (killed, crashed)
            self._failed(job, f"its process {describe_exit(code)}")

    def _failed(self, job: Job, error: str) -> None:
        """A job that could not run (or whose lane died): a job.failed of its own."""
        message = f"{job.title}: {job.operation} failed: {error}"
        self.emit("job.failed", message, **job.fields(), error=error)
        self.outcomes[job.id] = RepositoryOutcome(job.repository, error=error)
