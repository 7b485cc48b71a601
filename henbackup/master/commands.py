"""What the master answers on its control socket, one function per henbackupctl command.

Requests arrive with their shape checked (henbackup/protocol.py); names and options are
checked here, so that a mistake is a usage error (exit 2) at once, not a failed job later.
A backup goes to its worker (which keeps its schedule's records); everything else runs in a
one-off job process of the master's. All of it goes through the host-wide queue, which the
master changes without ever waiting for its lock. `status` and `queue` are answered from
the one status model (observe/status.py) without any lock: only the tickets of processes
outside the daemon are read from the queue's files, as they are, changing nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from henbackup import names
from henbackup.channel import StartRun
from henbackup.config.model import Priority
from henbackup.config.units import parse_priority, parse_subset
from henbackup.errors import QueueBusy, UnsafeTarget, UsageError
from henbackup.jobs.restore import fresh_directory, restore_directory, seen_otherwise
from henbackup.master import jobs
from henbackup.master.control import Conversation
from henbackup.master.permissions import CANCEL_RESTORE_DENIED, Privilege, refusal
from henbackup.master.states import Child
from henbackup.observe.status import LiveJob, RunHistory, RunKey, StatusModel, WorkerView
from henbackup.protocol import ControlReply, ControlRequest, reply_error
from henbackup.scheduler import procs
from henbackup.scheduler.ticket import Ticket

if TYPE_CHECKING:
    from henbackup.channel import Channel
    from henbackup.config.model import Config
    from henbackup.loop import Loop
    from henbackup.scheduler.queue import Scheduler

CANCEL_PATIENCE = 5.0  # seconds a cancel tries again while another process holds the queue
CANCEL_RETRY = 0.05
BUSY_QUEUE = "another process has held the job queue's lock"
NO_HISTORY = RunHistory()


class Worker(Protocol):
    """What a command needs of a worker the master supervises: its channel and state."""

    @property
    def channel(self) -> Channel | None: ...
    @property
    def child(self) -> Child: ...
    def send(self, message: StartRun) -> bool: ...


class Master(Protocol):
    """What a command needs of the master (master/supervisor.py's Master), and no more."""

    @property
    def config(self) -> Config: ...
    @property
    def config_path(self) -> Path: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def loop(self) -> Loop: ...
    @property
    def scheduler(self) -> Scheduler | None: ...
    @property
    def jobs(self) -> jobs.Jobs: ...
    @property
    def children(self) -> Mapping[str, Worker]: ...


Command = Callable[[Master, ControlRequest, Conversation], ControlReply | None]


def answer(
    master: Master, request: ControlRequest, conversation: Conversation
) -> ControlReply | None:
    """The reply to `request`, or None when `conversation` is answered later."""
    command = COMMANDS.get(request.command)
    if command is None:
        return reply_error("usage", f"unknown command {request.command!r}")
    denied = refusal(request.command, conversation.peer)
    if denied is not None:
        return reply_error("permission", denied)
    if master.stopping and request.command not in ("status", "queue"):
        return reply_error("failed", "henbackup is stopping: no new job starts")
    try:
        return command(master, request, conversation)
    except UsageError as error:
        return reply_error("usage", str(error))


# --- checks -----------------------------------------------------------------------------


def _backup_name(master: Master, name: object) -> str:
    if name not in master.config.backups:
        known = ", ".join(sorted(master.config.backups)) or "none"
        raise UsageError(f"no backup named {name!r} (defined: {known})")
    return str(name)


def _repository_name(master: Master, name: object) -> str:
    if name not in master.config.repositories:
        known = ", ".join(sorted(master.config.repositories)) or "none"
        raise UsageError(f"no repository named {name!r} (defined: {known})")
    return str(name)


def _priority(request: ControlRequest) -> str | None:
    value = request.get("priority")
    if value is None:
        return None
    try:
        parse_priority(value)
    except ValueError as error:
        raise UsageError(f"--priority {value!r}: {error}") from None
    return str(value)


# --- status and queue -------------------------------------------------------------------


def status(master: Master, request: ControlRequest, conversation: Conversation) -> ControlReply:
    model = master.jobs.model
    positions = {job.job: job.position for job in model.queue(_outsiders(master))}
    live: dict[RunKey, list[LiveJob]] = {}  # found once, not once per row: 1,000 rows
    for job in model.live.values():
        live.setdefault(job.key, []).append(job)
    backups = []
    for name, backup in sorted(master.config.backups.items()):
        rows = [
            _row(model, RunKey(r, "backup", name), positions, live) for r in backup.repositories
        ]
        worker = model.workers.get(names.worker_key("backup", name))
        backups.append({"name": name, **_worker(worker), "repositories": rows})
    repositories = []
    for name, repository in sorted(master.config.repositories.items()):
        scheduled = {"check": repository.check, "prune": repository.prune}
        operations = [
            {"operation": operation, **_row(model, RunKey(name, operation), positions, live)}
            for operation, settings in scheduled.items()
            if settings is not None or _known(model, RunKey(name, operation))
        ]
        worker = model.workers.get(names.worker_key("repository", name))
        repositories.append({"name": name, **_worker(worker), "operations": operations})
    return {
        "ok": True,
        "status": model.status_line(),
        "daemon": {
            "pid": os.getpid(),
            "config": str(master.config_path),
            "watcher": model.watcher,
            "config_rejected": model.config_rejected,
        },
        "backups": backups,
        "repositories": repositories,
    }


def _outsiders(master: Master) -> tuple[Ticket, ...]:
    """The living tickets in the queue's files, read as they are: no lock, no change."""
    known = master.jobs.model.ticket_ids()
    return master.scheduler.tickets(known) if master.scheduler else ()


def _known(model: StatusModel, key: RunKey) -> bool:
    """Whether an operation asked by hand has run, or waits or runs now."""
    return key in model.records or bool(model.jobs_of(key))


def _worker(worker: WorkerView | None) -> dict[str, Any]:
    """The worker's state (running, backoff, fatal…), whether a run is in progress, and
    when it runs next."""
    if worker is None:  # the members of status_rows.WorkerStatus (see _row)
        return {"worker": None, "run": "idle", "next_run": None}
    run = "running" if worker.running else "idle"
    return {"worker": worker.state, "run": run, "next_run": worker.next_run}


def _row(
    model: StatusModel,
    key: RunKey,
    positions: Mapping[str, int | None],
    jobs: Mapping[RunKey, list[LiveJob]],
) -> dict[str, Any]:
    """One backup→repository (or repository operation): now, and how it last went."""
    live = jobs.get(key, [])
    record = model.records.get(key, NO_HISTORY)
    last = record.last
    job: LiveJob | None = next((j for j in live if j.state == "running"), None) or (
        live[0] if live else None
    )
    # A dict with status_rows.StatusRow's members, in order: building a StatusRow costs ten
    # times more, 8 ms of a status at 1,000 backups.
    return {
        "repository": key.repository,
        "state": ("paused" if job.paused else job.state) if job else "idle",
        "job": job.job if job else None,
        "position": positions.get(job.job) if job else None,
        "percent": job.percent if job else None,
        "last_attempt": last.started if last else None,
        "last_success": record.last_success,
        "result": last.result if last else None,
        "duration": last.duration if last else None,
        "error": last.error if last else None,
        "snapshot": last.snapshot if last else None,
        "snapshots": record.snapshots,
        "limits": last.limits if last else None,
        "cpu_sec": last.cpu_sec if last else None,
        "memory_peak": last.memory_peak if last else None,
        **(_transfer(job) if job else NOT_RUNNING),
    }


NOT_RUNNING = dict.fromkeys(
    ("bytes_done", "total_bytes", "bytes_sent", "send_rate", "seconds_remaining")
)


def _transfer(job: LiveJob) -> dict[str, Any]:
    """What a running job has read, sent and has left, as its last progress said."""
    return {
        "bytes_done": job.bytes_done,
        "total_bytes": job.total_bytes,
        "bytes_sent": job.bytes_sent,
        "send_rate": job.send_rate,
        "seconds_remaining": job.seconds_remaining,
    }


def queue(master: Master, request: ControlRequest, conversation: Conversation) -> ControlReply:
    return {
        "ok": True,
        "jobs": [_queue_row(job) for job in master.jobs.model.queue(_outsiders(master))],
    }


def _queue_row(job: LiveJob) -> dict[str, Any]:
    return {
        "job": job.ticket_id,
        "state": "waiting" if job.state == "queued" else "paused" if job.paused else "running",
        "position": job.position,
        "operation": job.key.operation,
        "backup": job.key.backup or None,
        "repository": job.key.repository,
        "priority": _priority_label(job.priority),
        "pid": job.pid,
        "queued_at": job.queued_at or job.since,
        "percent": job.percent,
    }


def _priority_label(effective: int) -> str:
    """How the config spells a priority (`next`, `superior`, `-3`), from Priority.effective."""
    special = (Priority.ON_IDLE_BAND, Priority.NEXT_BAND, Priority.IMMEDIATE_BAND)
    by_effective = {Priority(band).effective: Priority(band) for band in special}
    return by_effective.get(effective, Priority.ordinary(effective)).label


def cancel(
    master: Master, request: ControlRequest, conversation: Conversation
) -> ControlReply | None:
    """Cancel at once, or, while another process holds the queue's lock, try again from
    the loop for a few seconds (never waiting for the lock) and answer then."""
    job: str = request.get("job")
    give_up = master.loop.clock() + CANCEL_PATIENCE
    spare = None if conversation.peer.privilege is Privilege.OWN else _is_restore

    def attempt() -> ControlReply | None:
        try:
            ticket = master.scheduler.cancel(job, wait=False, spare=spare)
            if spare is not None and ticket is not None and spare(ticket):
                return reply_error("permission", CANCEL_RESTORE_DENIED)  # root's alone to start
            reply = _cancelled(job, ticket)
        except QueueBusy:
            if master.loop.clock() >= give_up:
                return reply_error("failed", f"{BUSY_QUEUE} for {CANCEL_PATIENCE:g}s: try again")
            master.loop.call_later(CANCEL_RETRY, again)
            return None
        master.jobs.resume_paused(job)  # a paused job must run to act on its cancel
        return reply

    def again() -> None:
        reply = attempt()
        if reply is not None:
            conversation.finish(reply)

    if master.scheduler is None:
        return _cancelled(job, None)
    return attempt()


def _is_restore(ticket: Ticket) -> bool:
    return ticket.operation == "restore"


def _cancelled(job: str, ticket: Ticket | None) -> ControlReply:
    if ticket is None:
        unknown = f"no job {job!r} is waiting or running (see henbackupctl queue)"
        return reply_error("usage", unknown)
    if ticket.state == "running" and procs.alive(ticket.pid, ticket.start_time):  # not reused
        with contextlib.suppress(ProcessLookupError):  # it just ended
            os.kill(ticket.pid, signal.SIGUSR1)  # its process stops restic cleanly
    return {"ok": True, "job": job, "was": ticket.state}


# --- jobs -------------------------------------------------------------------------------


def backup(
    master: Master, request: ControlRequest, conversation: Conversation
) -> ControlReply | None:
    name = _backup_name(master, request.get("backup"))
    repository = request.get("repository")
    if repository is not None and repository not in master.config.backups[name].repositories:
        known = ", ".join(master.config.backups[name].repositories)
        raise UsageError(f"backup {name} does not go to {repository!r} (it goes to {known})")
    priority = _priority(request)
    worker = master.children.get(names.worker_key("backup", name))
    if worker is None or worker.channel is None:
        state = worker.child.state.value if worker else "absent"
        return reply_error("failed", f"backup {name} cannot start now: its worker is {state}")
    request_id = jobs.new_request_id()
    if not worker.send(StartRun("backup", repository, priority, (request_id,))):
        return reply_error("failed", f"backup {name} cannot start now: its worker does not read")
    if request.get("wait"):
        master.jobs.clients.add(request_id, conversation, names.worker_key("backup", name))
        return None
    return {"ok": True, "request": request_id, "accepted": "backup"}


def list_snapshots(
    master: Master, request: ControlRequest, conversation: Conversation
) -> ControlReply | None:
    backup = request.get("backup")
    if backup is not None:
        backup = _backup_name(master, backup)
    if request.get("repository") is not None:
        repositories = [_repository_name(master, request.get("repository"))]
    elif backup is not None:
        repositories = list(master.config.backups[backup].repositories)
    else:
        repositories = sorted(master.config.repositories)
    job = {"command": "list-snapshots", "repositories": repositories, "backup": backup}
    return master.jobs.start_one_off(master.config, job, conversation, wait=True)


def restore_snapshot(
    master: Master, request: ControlRequest, conversation: Conversation
) -> ControlReply | None:
    repository = _repository_name(master, request.get("repository"))
    snapshot = str(request.get("snapshot") or "")
    if not snapshot.isalnum() or len(snapshot) < 4:
        raise UsageError(
            f"{snapshot!r} is not a snapshot id: give at least its first 4 characters"
            f" (see henbackupctl list-snapshots {repository})"
        )
    priority = _priority(request)  # checked before anything is made
    target = request.get("target")
    if target is not None and not (isinstance(target, str) and os.path.isabs(target)):
        raise UsageError(f"--target {target!r}: give an absolute path")
    in_place = bool(request.get("in_place"))  # its type is checked by the protocol
    if in_place and target is not None:
        raise UsageError("--in-place and --target: give one of them")
    if target is not None and (other := seen_otherwise(request.get("target_base"), target)):
        raise UsageError(
            f"--target {target}: the daemon does not see {other} as you do (its unit gives it"
            " its own /tmp and /var/tmp, which you never see and which go when it stops):"
            " give a directory elsewhere"
        )
    try:
        destination, existed = _destination(
            master, target, in_place, f"{repository}-{snapshot[:8]}"
        )
    except UnsafeTarget as error:  # the state directory itself: not the caller's mistake
        return reply_error("failed", f"{error}: use --target")
    except OSError as error:
        where = target or master.state_dir / "restores"
        why = f"cannot make a directory in {where}: {error.strerror or error}"
        return reply_error("failed", why if target else f"{why}: use --target")
    job = {
        "command": "restore-snapshot",
        "repository": repository,
        "snapshot": snapshot,
        "target": destination,
        "include": [str(path) for path in request.get("include") or ()],
        "priority": priority,
        **({"in_place": True} if in_place else {}),
        **({"target_existed": True} if existed else {}),
    }
    reply = master.jobs.start_one_off(
        master.config, job, conversation, wait=bool(request.get("wait"))
    )
    if reply is not None and reply.get("ok"):  # accepted (--no-wait): say where it goes
        reply["target_existed"] = existed
    return reply


def _destination(master: Master, target: str | None, in_place: bool, name: str) -> tuple[str, bool]:
    """Where a restore writes, made now so that --no-wait can say where it goes, and whether
    it is a new directory inside a --target that exists. Raises UsageError for an unsafe
    --target, UnsafeTarget for an unsafe state directory, OSError."""
    if in_place:  # what it writes over is checked by the job, just before restic runs
        return "/", False
    if target is None:
        return str(fresh_directory(str(master.state_dir / "restores"), name)), False
    try:
        made = str(restore_directory(os.path.normpath(target), name))
    except UnsafeTarget as error:
        raise UsageError(f"--target: {error}") from None
    return made, made != os.path.normpath(target)


def maintenance(
    master: Master, request: ControlRequest, conversation: Conversation
) -> ControlReply | None:
    repository = _repository_name(master, request.get("repository"))
    job = {"command": request.command, "repository": repository, "priority": _priority(request)}
    subset = request.get("read_data_subset")
    if subset is not None:
        try:
            job["read_data_subset"] = parse_subset(subset)
        except ValueError as error:
            raise UsageError(f"--read-data-subset {subset!r}: {error}") from None
    return master.jobs.start_one_off(
        master.config, job, conversation, wait=bool(request.get("wait"))
    )


COMMANDS: dict[str, Command] = {
    "status": status,
    "queue": queue,
    "cancel": cancel,
    "backup": backup,
    "list-snapshots": list_snapshots,
    "restore-snapshot": restore_snapshot,
    "check": maintenance,
    "prune": maintenance,
}
