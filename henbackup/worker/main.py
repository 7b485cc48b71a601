"""A backup's worker: its own selector loop, its triggers, and one job process at a time.

The worker never runs restic itself: each run is a forked job process, so the loop stays
free for heartbeats, triggers and SIGTERM while a backup takes hours. A trigger that comes
while a run is in progress leaves exactly one follow-up run.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from henbackup.channel import Channel
from henbackup.config.dirs import Dirs
from henbackup.config.model import Config
from henbackup.jobs import entry
from henbackup.loop import Loop
from henbackup.master.specs import WorkerSpec
from henbackup.observe.events import EmitFunction, Emitter
from henbackup.process import Forked, fork_child, reap
from henbackup.scheduler.queue import Scheduler

HEARTBEAT_INTERVAL = 10.0


@dataclass(frozen=True)
class RunRequest:
    trigger: str  # watch, schedule, manual, startup
    reason: str
    operation: str = "backup"  # a repository worker runs check or prune


# Runs in the job process; returns its exit code (see henbackup.jobs.entry).
JobBody = Callable[[Config, WorkerSpec, RunRequest], int]


class Worker:
    def __init__(
        self,
        spec: WorkerSpec,
        config: Config,
        channel: Channel,
        emit: EmitFunction,
        job_body: JobBody,
        loop: Loop | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.spec, self.config, self.channel, self.emit = spec, config, channel, emit
        self.job_body = job_body
        self.loop = loop or Loop()
        self.scheduler = scheduler
        self.job: Forked | None = None
        self.pending: dict[str, RunRequest] = {}  # by operation: at most one follow-up each
        self.stopping = False
        self.on_job_done: list[Callable[[int], None]] = []  # triggers re-arm from here

    def run(self) -> int:
        """Serve until SIGTERM (or the master going away); returns the exit code."""
        self.loop.on_signal(signal.SIGTERM, self.shutdown)
        self.loop.on_signal(signal.SIGINT, self.shutdown)
        self.loop.add_reader(self.channel.fileno(), self._on_messages)
        self._heartbeat()
        self.channel.send({"type": "ready"})
        self.loop.run()
        return 0

    def _heartbeat(self) -> None:
        self.channel.send({"type": "heartbeat"})
        self.loop.call_later(HEARTBEAT_INTERVAL, self._heartbeat)

    def _on_messages(self) -> None:
        messages = self.channel.receive()
        if messages is None:  # the master is gone: nothing left to report to
            self.shutdown()
            return
        for message in messages:
            if message.get("type") == "run":
                operation = str(message.get("operation", "backup"))
                self.request(RunRequest("manual", "asked through the control socket", operation))

    def request(self, run: RunRequest) -> None:
        """A trigger fired: start a run now, or once the current one is done."""
        if self.stopping:
            return
        self.emit(
            "trigger.fired",
            f"{self.spec.name}: {run.operation} on {run.trigger} ({run.reason})",
            trigger=run.trigger,
            reason=run.reason,
            operation=run.operation,
            **{self.spec.kind: self.spec.name},
        )
        if self.job is not None:
            self.pending[run.operation] = run
            return
        self._start(run)

    def _start(self, run: RunRequest) -> None:
        def body() -> int:
            self.loop.close()
            self.channel.close()
            return self.job_body(self.config, self.spec, run)

        self.job = fork_child(f"hbjob:{self.spec.name}", body)
        self.loop.add_reader(self.job.pidfd, self._job_exited)
        self.channel.send({"type": "job", "state": "running", "operation": run.operation})

    def _job_exited(self) -> None:
        assert self.job is not None
        self.loop.remove_reader(self.job.pidfd)
        status = reap(self.job)
        self.job = None
        if self.scheduler is not None:
            self.scheduler.nudge()  # if it died holding its slot, the next job may start
        code = os.waitstatus_to_exitcode(status)
        self.channel.send({"type": "job", "state": "idle", "exit": code})
        for callback in self.on_job_done:
            callback(code)
        if self.stopping:
            self.loop.stop()
        elif self.pending:
            operation = next(iter(self.pending))
            self._start(self.pending.pop(operation))

    def shutdown(self) -> None:
        """Stop: interrupt the running job cleanly (it stops restic), then leave the loop."""
        self.stopping = True
        self.pending.clear()
        if self.job is None:
            self.loop.stop()
        else:
            os.kill(self.job.pid, signal.SIGTERM)


def run_job_body(config: Config, spec: WorkerSpec, run: RunRequest) -> int:
    """The job process: the backup pipeline, or a repository's check or prune."""
    if spec.kind == "backup":
        return entry.backup_job(config, spec, run.trigger)
    return entry.maintenance_job(config, spec, run.operation, run.trigger)


def worker_main(spec: WorkerSpec, config: Config, channel: Channel) -> int:
    """The body of a forked worker process."""
    scheduler = Scheduler(Dirs.from_environment().scheduler)
    return Worker(spec, config, channel, Emitter(), run_job_body, scheduler=scheduler).run()
