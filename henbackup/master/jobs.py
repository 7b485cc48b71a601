"""What the master knows of jobs: every job event of every job process (through the workers,
or straight from the one-off job processes started here for henbackupctl) feeds the status
model, the clients waiting for it and the metrics."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from henbackup import names
from henbackup.channel import Channel, ChannelMessage, JobEvent, JobExit, OneOffResult
from henbackup.config.model import Config, Metrics
from henbackup.jobs.job import new_job_id
from henbackup.jobs.snapshots import snapshot_counts
from henbackup.loop import Loop
from henbackup.master.clients import Clients
from henbackup.master.control import Conversation
from henbackup.master.permissions import Privilege
from henbackup.observe import metrics
from henbackup.observe.events import EmitFunction
from henbackup.observe.status import ENDINGS, LiveJob, StatusModel
from henbackup.process import Watched, describe_exit, start_watched
from henbackup.protocol import ControlReply, reply_error

if TYPE_CHECKING:
    from henbackup.scheduler.queue import Scheduler

# One-off job processes alive at once: each holds 2 of the master's fds and a process, and
# outlives its client, so requests without end would exhaust LimitNOFILE. 64 is far more
# than the queue's slots run at once; a member (not root) may hold a quarter of them.
MAX_ONE_OFFS = 64
MAX_ONE_OFFS_OF_MEMBER = 16
ONE_OFFS_BUSY = "henbackup runs {} checks, prunes, restores and listings at once{}, its most"

# Runs a henbackupctl request in a forked job process; its reply goes on the channel.
OneOffBody = Callable[[Config, dict[str, Any], Channel], int]


@dataclass
class OneOffProcess:
    """A job process the master started for a henbackupctl request."""

    request: str
    process: Watched
    uid: int | None = None  # who asked: its client's
    result: ControlReply | None = None
    recount: Callable[[ControlReply], None] | None = None  # takes in what a listing counted


@dataclass
class Jobs:
    loop: Loop
    emit: EmitFunction
    model: StatusModel = field(default_factory=StatusModel)
    scheduler: Scheduler | None = None
    one_off_body: OneOffBody | None = None
    on_change: Callable[[], None] = lambda: None  # something to show in STATUS=
    clients: Clients = field(default_factory=Clients)
    one_offs: dict[str, OneOffProcess] = field(default_factory=dict)
    settings: Metrics = field(default_factory=Metrics)
    metrics_server: metrics.MetricsServer | None = None
    results_unsaved: bool = False  # the last save of the results failed (and was said)
    textfile_failing: bool = False  # the last write of the metrics failed (and was said)
    after_event: Callable[[], None] = lambda: None  # the queue may have changed (preemption)
    resume_paused: Callable[[str], None] = lambda ticket: None  # a paused job is cancelled

    # events
    def event(self, owner: str, event: JobEvent) -> None:
        """A job or hook event from the job process of `owner` (a worker's key or a
        one-off's request id), for the clients waiting on its requests."""
        kind, fields = event.kind, event.fields
        self.clients.event(event.requests, kind, event.message, fields)
        stalled = self._stalled()
        if self.model.apply(kind, fields, owner) is not None:
            self._results_changed()
        elif kind in ("job.queued", "job.started") or self._stalled() != stalled:
            self.write_metrics()  # henbackup_jobs_running, _waiting or _job_stalled changed
        if kind in ("job.queued", "job.started", *ENDINGS):
            self.after_event()

    def _stalled(self) -> set[str]:
        return {job.job for job in self.model.running() if job.stalled}

    def process_ended(self, owner: str, exit_code: int) -> None:
        """A job process is gone: a job it never ended failed, and the journal says why."""
        how = describe_exit(exit_code)
        for job in self.model.owner_gone(owner):
            self._emit_lost(job, how)
        if self.scheduler is not None and not JobExit.orderly(exit_code):
            self.scheduler.nudge()  # it may have died holding its slot (see Scheduler.nudge)
        self.after_event()

    def _emit_lost(self, job: LiveJob, how: str) -> None:
        error = f"its process {how} before the job ended"
        fields = {"job": job.job, "operation": job.key.operation, "repository": job.key.repository}
        self.emit(
            "job.failed",
            f"{job.title}: {job.key.operation} failed: {error}",
            **fields,
            backup=job.key.backup or None,
            trigger=job.trigger,
            priority=job.priority,
            error=error,
        )
        self.model.apply("job.failed", {**fields, "backup": job.key.backup, "error": error}, "")
        self._results_changed()

    def _results_changed(self) -> None:
        """Keep the results and rewrite the metrics textfile: after every job. A state
        directory that cannot keep them is said once, until a save works again."""
        try:
            self.model.save()
        except OSError as error:
            if not self.results_unsaved:  # said once, not after every job
                reason = error.strerror or str(error)  # not the temporary file's name
                message = f"{self.model.path}: cannot keep the job results ({reason})"
                self.emit("status.unsaved", message, error=reason)
            self.results_unsaved = True
        else:
            self.results_unsaved = False
        self.write_metrics()

    # metrics
    def configure(self, settings: Metrics) -> None:
        """Apply the [metrics] settings (at start and on reload)."""
        self.settings = settings
        address = settings.listen
        if self.metrics_server is not None and self.metrics_server.address != address:
            self.metrics_server.close()
            self.metrics_server = None
        if address is not None and self.metrics_server is None:
            try:
                self.metrics_server = metrics.MetricsServer.open(
                    self.loop, address, lambda: metrics.render(self.model)
                )
            except OSError as error:
                self._metrics_failed(f"cannot serve metrics on {address[0]}:{address[1]}", error)
        self.write_metrics()

    def write_metrics(self, up: bool = True) -> None:
        path = self.settings.textfile
        if path is None:
            return
        try:
            metrics.write_textfile(path, metrics.render(self.model, up))
        except (OSError, ValueError) as error:  # a full disk, a name that cannot be encoded
            if not self.textfile_failing:  # said once, until it works again
                self._metrics_failed(f"cannot write the metrics to {path}", error)
            self.textfile_failing = True
        else:
            self.textfile_failing = False

    def _metrics_failed(self, what: str, error: Exception) -> None:
        reason = str(getattr(error, "strerror", None) or error)
        self.emit("metrics.failed", f"{what}: {reason}", error=reason)

    # one-off job processes
    def start_one_off(
        self, config: Config, request: dict[str, Any], conversation: Conversation, wait: bool
    ) -> ControlReply | None:
        """Run `request` in a job process of its own; the reply comes when it ends, unless
        `wait` is false (then: at once, with the request's id)."""
        assert self.one_off_body is not None
        busy = self._one_offs_busy(conversation)
        if busy is not None:
            return busy
        request_id, body_of = new_request_id(), self.one_off_body
        process = start_watched(
            self.loop,
            names.job_title(request["command"])[:15],
            lambda channel: body_of(config, request, channel),
            heard=lambda messages: self._one_off_said(request_id, messages),
            exited=lambda status: self._one_off_exited(request_id, status),
            malformed=lambda error: self.loop.report_error(f"job process {request_id}", error),
        )
        self.one_offs[request_id] = OneOffProcess(request_id, process, conversation.peer.uid)
        if request["command"] == "list-snapshots":  # the snapshot counts, reconciled
            self.one_offs[request_id].recount = lambda reply: self.model.recount(
                snapshot_counts(config, request, reply)
            )
        if wait:
            self.clients.add(request_id, conversation, request_id)
            return None
        accepted = {"request": request_id, "accepted": request["command"]}
        return {"ok": True, **accepted, "target": request.get("target")}

    def _one_offs_busy(self, conversation: Conversation) -> ControlReply | None:
        """The refusal of one more one-off job process, when it would pass a limit."""
        if len(self.one_offs) >= MAX_ONE_OFFS:
            busy = ONE_OFFS_BUSY.format(MAX_ONE_OFFS, "")
        elif conversation.peer.privilege is not Privilege.OWN and (
            sum(o.uid == conversation.peer.uid for o in self.one_offs.values())
            >= MAX_ONE_OFFS_OF_MEMBER
        ):
            busy = ONE_OFFS_BUSY.format(MAX_ONE_OFFS_OF_MEMBER, " for one user")
        else:
            return None
        return reply_error("failed", f"{busy}: try again once one has ended")

    def _one_off_said(self, request_id: str, messages: list[ChannelMessage]) -> None:
        one_off = self.one_offs[request_id]
        for message in messages:
            if isinstance(message, JobEvent):
                self.event(request_id, replace(message, requests=(request_id,)))
            elif isinstance(message, OneOffResult):
                one_off.result = dict(message.reply)
                if one_off.recount is not None and one_off.result.get("ok"):
                    one_off.recount(one_off.result)
                    self._results_changed()

    def _one_off_exited(self, request_id: str, status: int) -> None:
        one_off = self.one_offs.pop(request_id)
        self.process_ended(request_id, os.waitstatus_to_exitcode(status))
        died = reply_error(
            "failed", f"the job process {describe_exit(os.waitstatus_to_exitcode(status))}"
        )
        self.clients.finish(request_id, one_off.result or died)
        self.on_change()

    def signal_one_offs(self, signum: int, group: bool = False) -> None:
        """SIGTERM to stop them cleanly; SIGKILL to their whole process group at the end."""
        for one_off in self.one_offs.values():
            if group:
                os.killpg(one_off.process.pid, signum)
            else:
                os.kill(one_off.process.pid, signum)

    def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None


def new_request_id() -> str:
    """The id of one henbackupctl request: what the master and the job processes call it."""
    return "r" + new_job_id()
