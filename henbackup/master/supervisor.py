"""The master: forks one worker per backup (and per maintained repository), keeps them alive,
reloads on SIGHUP, stops cleanly on SIGTERM, and tells systemd how things are.

When a backup is watched it also keeps the watcher alive (worker/watching.py: the daemon's
one inotify instance), tells it what to watch as reloads change it, and forwards what it
saw to the backup's worker; once a watcher that died watches again, every watched backup's
worker hears that events were lost (a backup runs to catch up).

One selector loop: pidfds say a child exited, channels carry its heartbeats and news,
timers restart children after their backoff and ping the watchdog. Signals only wake it.
No one bad event ends it: an exception in any callback becomes a daemon.error event with
its traceback, and the loop goes on.
Job events from every job process reach it (through the workers, or straight from the
one-off job processes it starts for henbackupctl) and feed the one status model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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
    Unwatch,
    Watch,
    WatchNews,
)
from henbackup.config.load import load_config
from henbackup.config.model import Config
from henbackup.errors import ConfigError
from henbackup.limits.cgroups import detect, prepare_v2, sweep
from henbackup.limits.mapping import CGROUP_KEYS
from henbackup.limits.pause import resume_leftovers
from henbackup.limits.place import config_problems, say_unavailable
from henbackup.loop import Loop
from henbackup.master import commands
from henbackup.master.control import ControlServer, Conversation, bind, socket_from_systemd
from henbackup.master.jobs import Jobs, OneOffBody
from henbackup.master.permissions import operators_gid
from henbackup.master.preempt import Preemption
from henbackup.master.specs import WATCHER, diff, worker_specs
from henbackup.master.states import Child, ChildState, Policy
from henbackup.observe.events import EmitFunction
from henbackup.observe.notify import Notifier
from henbackup.observe.status import StatusModel, WorkerView
from henbackup.process import (
    Watched,
    WatchedPlan,
    become_subreaper,
    describe_exit,
    reap_orphans,
    start_watched,
    start_watched_many,
)
from henbackup.protocol import ControlReply, ControlRequest, reply_error
from henbackup.scheduler.queue import PAUSE_MARKS, REPLAN_EVERY
from henbackup.worker.spec import WorkerSpec
from henbackup.worker.watching import watches

if TYPE_CHECKING:
    from henbackup.scheduler.queue import Scheduler

# Runs in the forked worker with its end of the channel; returns the worker's exit code.
WorkerBody = Callable[[WorkerSpec, Config, Channel], int]


# Orphans are reaped on SIGCHLD, and this often anyway (see process.reap_orphans).
ORPHAN_ROUND = 5.0


def _seconds(name: str, default: float) -> float:
    """Timeouts can be shortened through the environment (tests, debugging)."""
    return float(os.environ.get(name, default))


@dataclass
class Supervised:
    spec: WorkerSpec
    child: Child
    process: Watched | None = None
    last_heard: float = 0.0
    running: bool = False  # a run (hooks and jobs) is in progress in its job process
    next_run: float | None = None  # epoch seconds of its next scheduled run
    replacement: WorkerSpec | None = None  # a changed definition, started once this one stops
    hung: bool = False
    spawns: int = 0  # how many times it was started

    @property
    def channel(self) -> Channel | None:
        """To tell the worker (None while it is not there to hear)."""
        return self.process.channel if self.process is not None else None

    def send(self, message: ChannelMessage) -> bool:
        """Tell the worker, never waiting for it (Watched.send); False when it cannot hear."""
        return self.process is not None and self.process.send(message)


@dataclass
class Master:
    config_path: Path
    config: Config
    emit: EmitFunction
    worker_body: WorkerBody
    notifier: Notifier = field(default_factory=Notifier)
    policy: Policy = field(default_factory=Policy)
    loop: Loop = field(default_factory=Loop)
    hang_timeout: float = field(default_factory=lambda: _seconds("HENBACKUP_HANG_TIMEOUT", 60))
    stop_timeout: float = field(default_factory=lambda: _seconds("HENBACKUP_STOP_TIMEOUT", 80))
    socket_path: Path | None = None  # None: taken from systemd socket activation, or none
    scheduler: Scheduler | None = None  # the host-wide queue: slots set here, nudged on deaths
    one_off_body: OneOffBody | None = None
    state_dir: Path = Path("/var/lib/henbackup")
    model: StatusModel = field(default_factory=StatusModel)
    children: dict[str, Supervised] = field(default_factory=dict)
    stopping: bool = False
    control: ControlServer | None = None
    jobs: Jobs = field(init=False)
    preemption: Preemption = field(init=False)

    def __post_init__(self) -> None:
        self.loop.on_error = self._internal_error
        self.jobs = Jobs(
            self.loop,
            self.emit,
            self.model,
            self.scheduler,
            self.one_off_body,
            on_change=self._after_job_process,
        )
        scheduler = self.scheduler
        self.preemption = Preemption(
            self.loop,
            self.emit,
            self.model,
            set_slots=scheduler.set_slots if scheduler else lambda _: None,
            outsiders=lambda: scheduler.tickets(self.model.ticket_ids()) if scheduler else (),
            marks=scheduler.directory / PAUSE_MARKS if scheduler else None,
            on_change=self._paused_or_resumed,
            stopping=self._stopping_workers,
        )
        self.jobs.after_event = self.preemption.review
        self.jobs.resume_paused = self.preemption.resume_cancelled

    # running
    def run(self) -> int:
        """Start every worker, tell systemd we are ready, serve until SIGTERM; returns 0."""
        self.loop.on_signal(signal.SIGHUP, self.reload)
        self.loop.on_signal(signal.SIGTERM, self.stop)
        self.loop.on_signal(signal.SIGINT, self.stop)
        become_subreaper()
        self.loop.on_signal(signal.SIGCHLD, self._reap_orphans)
        self._reap_orphans_regularly()
        self._replan_queue_regularly()
        self._open_control()
        self.jobs.configure(self.config.metrics)
        self._configure_preemption()
        unprepared = prepare_v2()  # before any fork: every child starts in our leaf
        host = self.preemption.host = detect()
        if self.scheduler is not None:  # a master that died may have left programs paused
            resume_leftovers(self.scheduler.directory / PAUSE_MARKS, host)
        sweep(host)  # the leaves of job processes killed before they removed theirs
        self._add(*worker_specs(self.config).values())
        self.emit(
            "daemon.started",
            f"henbackup started: {self._summary()}",
            pid=os.getpid(),
            config=str(self.config_path),
        )
        self._warn_limits(unprepared)
        if self.notifier.problem is not None:
            message = f"systemd's notifications are off: {self.notifier.problem}"
            self.emit("daemon.error", message, source="NOTIFY_SOCKET", error=self.notifier.problem)
        for problem in self.model.problems:  # what could not be read of the kept results
            self.emit("status.unreadable", problem, error=problem)
        self.notifier.ready()
        self._update_status()
        self._check_heartbeats()
        if self.notifier.watchdog_interval:
            self._watchdog()
        self.loop.run()
        self.jobs.write_metrics(up=False)  # node_exporter goes on serving the file: say so
        return 0

    def _open_control(self) -> None:
        sock = socket_from_systemd()
        if sock is None and self.socket_path is not None:
            sock = bind(self.socket_path)
        if sock is not None:
            self.control = ControlServer(sock, self.loop, self._control_request)
            self.control.start()

    def _watchdog(self) -> None:
        # Sent from a timer of the one loop: if the loop is stuck, systemd stops hearing it.
        self.notifier.watchdog()
        self.loop.call_later(self.notifier.watchdog_interval or 1.0, self._watchdog)

    # children
    def _add(self, *specs: WorkerSpec) -> None:
        """Start these new children, forked in one burst (see `start_watched_many`)."""
        for spec in specs:
            self.children[spec.key] = Supervised(spec, Child(spec.key))
        plans = [self._plan(spec.key) for spec in specs]
        try:
            processes = start_watched_many(self.loop, plans) if plans else []
        except OSError:  # its first fork failed
            processes = []
        for spec, process in zip(specs, processes, strict=False):
            self._started(spec.key, process)
        for spec in specs[len(processes) :]:  # a fork failed: one at a time, as restarts do
            self._spawn(spec.key)

    def _spawn(self, key: str) -> None:
        try:
            process = start_watched(self.loop, *self._plan(key))
        except OSError as error:  # EAGAIN (the process table, RLIMIT_NPROC), ENOMEM
            self._not_started(key, error)
            return
        self._started(key, process)

    def _not_started(self, key: str, error: OSError) -> None:
        """A worker that could not be forked fails as one that died at once: it backs off
        and is tried again (FATAL after too many in a row), never left without a process."""
        supervised = self.children[key]
        spec, child, now = supervised.spec, supervised.child, self.loop.clock()
        child.spawned(0, now)
        child.died(now, self.policy)
        reason = str(error)
        self.emit(
            "child.exited",
            f"worker {spec.name} could not be started (fork: {reason}){self._next_of(child)}",
            child=spec.name,
            child_kind=spec.kind,
            state=child.state.value,
            error=reason,
            **_owner(spec),
        )
        self._after_exit(key, supervised)

    def _plan(self, key: str) -> WatchedPlan:
        config, spec = self.config, self.children[key].spec
        title = names.WATCHER_TITLE if spec == WATCHER else names.worker_title(spec.name)
        return WatchedPlan(
            title,
            lambda channel: self.worker_body(spec, config, channel),
            heard=lambda messages: self._heard(key, messages),
            exited=lambda status: self._exited(key, status),
            malformed=lambda error: self.loop.report_error(f"worker {spec.name}", error),
        )

    def _started(self, key: str, process: Watched) -> None:
        supervised = self.children[key]
        spec = supervised.spec
        now = self.loop.clock()
        supervised.process, supervised.last_heard = process, now
        supervised.hung, supervised.running = False, False
        supervised.spawns += 1
        supervised.child.spawned(process.pid, now)
        self.emit(
            "child.started",
            f"worker {spec.name} started (pid {process.pid})",
            child=spec.name,
            child_kind=spec.kind,
            pid=process.pid,
            **_owner(spec),
        )

    def _heard(self, key: str, messages: list[ChannelMessage]) -> None:
        supervised = self.children[key]
        supervised.last_heard = self.loop.clock()
        for message in messages:
            self._handle(supervised, message)

    def _handle(self, supervised: Supervised, message: ChannelMessage) -> None:
        key = supervised.spec.key
        if isinstance(message, Heartbeat):  # alive (last_heard says so): nothing else changed
            return
        if isinstance(message, Ready) and supervised.child.state is ChildState.STARTING:
            supervised.child.ready(self.loop.clock())
            if supervised.spec == WATCHER and supervised.spawns > 1:
                self._watching_again()
        elif isinstance(message, WatchNews):
            self._to_worker(names.worker_key("backup", message.backup), message)
            return
        elif isinstance(message, JobEvent):
            self.jobs.event(key, message)
        elif isinstance(message, Accepted):
            for request in message.requests:
                self.jobs.clients.accepted(request, message.operation)
        elif isinstance(message, Refused):
            for request in message.requests:
                self.jobs.clients.finish(request, reply_error("failed", message.reason))
        elif isinstance(message, JobState):
            supervised.next_run = message.next_run
            supervised.running = message.state == "running"
            if message.state == "idle":  # its job process ended
                self.jobs.process_ended(key, message.exit)
                for request in message.requests:
                    self.jobs.clients.finish(request, _reply_for_exit(message.exit))
        self._update_status(supervised)
        if isinstance(message, JobState):
            self.jobs.write_metrics()  # its next run, in the textfile too

    def _to_worker(self, key: str, message: WatchNews | Watch | Unwatch) -> None:
        """Tell child `key`, if it is there to hear (else the message goes)."""
        supervised = self.children.get(key)
        if supervised is not None:
            supervised.send(message)

    def _watching_again(self) -> None:
        """The watcher died and watches again: what changed in between was not seen."""
        for name in watches(self.config):
            self._to_worker(names.worker_key("backup", name), WatchNews(name, overflow=True))

    def _rewatch(self, old: Config, new: Config) -> None:
        """A reload: the watcher watches anew what changed, and no more what went."""
        before, after = watches(old), watches(new)
        for name in before.keys() - after.keys():  # first: the watches it frees
            self._to_worker(WATCHER.key, Unwatch(name))
        for name, watch in after.items():
            if before.get(name) != watch:
                self._to_worker(WATCHER.key, watch)

    def _paused_or_resumed(self) -> None:
        self._update_status()
        self.jobs.write_metrics()  # henbackup_job_paused

    def _after_job_process(self) -> None:
        """A one-off job process ended: the last one lets a stopping master go."""
        if self.stopping and not self.children and not self.jobs.one_offs:
            self.loop.stop()
        self._update_status()

    def _exited(self, key: str, status: int) -> None:
        supervised = self.children[key]
        assert supervised.process is not None
        pid = supervised.process.pid
        supervised.process = None
        self.jobs.process_ended(key, os.waitstatus_to_exitcode(status))  # its job died too
        self.jobs.clients.owner_gone(key, f"the worker of {supervised.spec.name} stopped")
        now = self.loop.clock()
        supervised.child.died(now, self.policy)
        self._report_exit(supervised, pid, status)
        self._after_exit(key, supervised)
        self._update_status()

    def _next_of(self, child: Child) -> str:
        """What follows a child's end, for its child.exited message."""
        return {
            ChildState.STOPPED: "",
            ChildState.FATAL: f"; it failed {child.quick_failures} times in a row, giving up",
            ChildState.BACKOFF: f"; restarting in {self.policy.delay(child.quick_failures):g}s",
        }[child.state]

    def _report_exit(self, supervised: Supervised, pid: int, status: int) -> None:
        spec, child = supervised.spec, supervised.child
        how = (
            "hung and was killed"
            if supervised.hung
            else describe_exit(os.waitstatus_to_exitcode(status))
        )
        self.emit(
            "child.exited",
            f"worker {spec.name} (pid {pid}) {how}{self._next_of(child)}",
            child=spec.name,
            child_kind=spec.kind,
            pid=pid,
            exit_status=os.waitstatus_to_exitcode(status),
            state=child.state.value,
            **_owner(spec),
        )

    def _after_exit(self, key: str, supervised: Supervised) -> None:
        child = supervised.child
        if child.state is ChildState.BACKOFF and child.restart_at is not None:
            self.loop.call_at(child.restart_at, lambda: self._restart(key))
        elif child.state is ChildState.STOPPED:
            del self.children[key]
            if supervised.replacement is not None and not self.stopping:
                self._add(supervised.replacement)
            elif self.stopping and not self.children and not self.jobs.one_offs:
                self.loop.stop()

    def _restart(self, key: str) -> None:
        supervised = self.children.get(key)
        if supervised is not None and supervised.child.state is ChildState.BACKOFF:
            self._spawn(key)
            self._update_status()

    def _stop_child(self, key: str) -> None:
        """SIGTERM the worker (it interrupts its job cleanly); a dead one is stopped at once."""
        supervised = self.children[key]
        supervised.child.stop(self.loop.clock())
        self.preemption.release(key)  # a paused restic could not stop cleanly
        if supervised.child.state is ChildState.STOPPED:
            self._after_exit(key, supervised)
        elif supervised.process is not None:
            process = supervised.process
            os.kill(process.pid, signal.SIGTERM)
            # a worker whose loop hangs would stop never, and its replacement never start
            self.loop.call_later(self.stop_timeout, lambda: self._kill_if_still(key, process))

    def _kill_if_still(self, key: str, process: Watched) -> None:
        """`process` (asked to stop stop_timeout ago) is still `key`'s: SIGKILL its group."""
        supervised = self.children.get(key)
        if supervised is not None and supervised.process is process:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def _stopping_workers(self) -> set[str]:
        return {k for k, s in self.children.items() if s.child.state is ChildState.STOPPING}

    def _reap_orphans(self) -> None:
        """Reap what was orphaned below us (a restic whose job process was killed): a zombie
        restic would keep its repository lock looking live."""
        tracked = {s.process.pid for s in self.children.values() if s.process is not None}
        reap_orphans(tracked | {o.process.pid for o in self.jobs.one_offs.values()})

    def _reap_orphans_regularly(self) -> None:
        self._reap_orphans()
        self.loop.call_later(ORPHAN_ROUND, self._reap_orphans_regularly)

    def _replan_queue_regularly(self) -> None:
        """While a job of ours waits (a killed `henbackup backup` nudged no one: see replan)."""
        if self.scheduler is not None and self.model.waiting():
            self.scheduler.replan()
        self.loop.call_later(REPLAN_EVERY, self._replan_queue_regularly)

    def _check_heartbeats(self) -> None:
        now = self.loop.clock()
        for supervised in self.children.values():
            silent = now - supervised.last_heard
            alive = supervised.child.state in (ChildState.STARTING, ChildState.RUNNING)
            if alive and silent > self.hang_timeout and supervised.process is not None:
                supervised.hung = True
                os.killpg(supervised.process.pid, signal.SIGKILL)
        self.loop.call_later(min(self.hang_timeout / 4, 10.0), self._check_heartbeats)

    # signals
    def reload(self) -> None:
        """SIGHUP: apply a new config by name; an invalid one is rejected, the old one runs."""
        if self.stopping:
            return
        self.notifier.reloading()
        operators_gid.cache_clear()  # group henbackup may have been made or changed since
        try:
            self._apply(load_config(self.config_path))
            self.model.config_rejected = None
        except ConfigError as error:
            self.model.config_rejected = time.time()  # said in status until a reload works
            self.emit(
                "config.invalid",
                f"new configuration rejected, the running one stays: {error}",
                error=str(error),
                problems=len(error.problems),
                config=str(self.config_path),
            )
        finally:  # whatever happened, systemd's reload ends
            self.notifier.ready()
        self._update_status()

    def _apply(self, config: Config) -> None:
        # a worker still stopping for an earlier reload is compared by what follows it; one
        # stopping for good (its backup removed) is no more: put back, it is added anew
        leaving = {key for key, s in self.children.items() if self._leaving(s)}
        old = {
            key: s.replacement or s.spec for key, s in self.children.items() if key not in leaving
        }
        new = worker_specs(config)
        change = diff(old, new)
        self._rewatch(self.config, config)
        self.config = config
        self._configure_preemption()
        for key in change.removed:
            self.children[key].replacement = None
            self._stop_child(key)
        for key in change.changed:
            self.children[key].replacement = new[key]
            self._stop_child(key)
        for key in leaving & set(change.added):  # back before its worker stopped
            self.children[key].replacement = new[key]
        self._add(*(new[key] for key in change.added if key not in leaving))
        self._retry_fatal()
        self.jobs.configure(config.metrics)
        # what the config names: the watcher comes and goes with watched backups, unnamed
        added, changed, removed = (
            [key for key in keys if key != WATCHER.key]
            for keys in (change.added, change.changed, change.removed)
        )
        self.emit(
            "config.reloaded",
            f"configuration reloaded: {len(added)} added, "
            f"{len(changed)} changed, {len(removed)} removed",
            added=" ".join(added),
            changed=" ".join(changed),
            removed=" ".join(removed),
            config=str(self.config_path),
        )
        self._warn_limits()

    @staticmethod
    def _leaving(supervised: Supervised) -> bool:
        """Stopping, and nothing to start after it."""
        return supervised.child.state is ChildState.STOPPING and supervised.replacement is None

    def _retry_fatal(self) -> None:
        """A reload gives the children that gave up another try: the owner may have fixed
        the cause (a binary, a limit such as fs.inotify.max_user_instances). Those whose
        definition changed or went are not here any more."""
        for key, supervised in list(self.children.items()):
            if supervised.child.state is ChildState.FATAL:
                supervised.child.retry()
                self._spawn(key)

    def _configure_preemption(self) -> None:
        """The slots (max_concurrent_jobs, plus those paused jobs lend) and preempt_after."""
        daemon = self.config.daemon
        forgetting = frozenset(n for n, b in self.config.backups.items() if b.retention)
        self.preemption.configure(daemon.max_concurrent_jobs, daemon.preempt_after, forgetting)

    def _warn_limits(self, unprepared: str | None = None) -> None:
        """One warning per limit of the config this host cannot apply; `unprepared`: why
        the cgroup v2 setup at start failed, the reason of every cgroup limit then."""
        for kind, owner, key, reason in config_problems(self.config, detect()):
            if unprepared and key in CGROUP_KEYS:
                reason = unprepared
            say_unavailable(self.emit, kind, owner, key, reason)

    def stop(self) -> None:
        """SIGTERM: no new job, running ones interrupted cleanly, children reaped, exit 0."""
        if self.stopping:
            return
        self.stopping = True
        self.notifier.stopping()
        self.emit("daemon.stopping", "henbackup stopping", pid=os.getpid())
        self.preemption.resume_all()  # a paused restic could not stop cleanly
        for key in list(self.children):
            self._stop_child(key)
        self.jobs.signal_one_offs(signal.SIGTERM)
        if self.control is not None:
            self.control.close()
            self.control = None
        self.jobs.close()
        if not self.children and not self.jobs.one_offs:
            self.loop.stop()
        self.loop.call_later(self.stop_timeout, self._kill_remaining)
        self._update_status()

    def _kill_remaining(self) -> None:
        for supervised in self.children.values():
            if supervised.process is not None:
                os.killpg(supervised.process.pid, signal.SIGKILL)
        self.jobs.signal_one_offs(signal.SIGKILL, group=True)

    def _internal_error(self, source: str, error: Exception) -> None:
        """A bug met in `source` (the loop's on_error): the journal gets its traceback, the
        master goes on."""
        reason = (str(error).splitlines() or [""])[0][:300]
        reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
        try:
            self.emit(
                "daemon.error",
                f"internal error in {source}, henbackup goes on: {reason}",
                source=source,
                error=reason,
                traceback="".join(traceback.format_exception(error)),
            )
        except Exception:  # not even an event can be written: stderr, if that works
            with contextlib.suppress(Exception):
                traceback.print_exception(error, file=sys.stderr)

    # control requests
    def _control_request(
        self, request: ControlRequest, conversation: Conversation
    ) -> ControlReply | None:
        return commands.answer(self, request, conversation)

    # status
    def _summary(self) -> str:
        backups = sum(1 for s in self.children.values() if s.spec.kind == "backup")
        return f"{backups} backup{'s' if backups != 1 else ''}"

    def _update_status(self, changed: Supervised | None = None) -> None:
        """Tell the model how the workers are (status reads them there), and systemd.

        `changed`: only that worker changed (its news), so only its view is made again: a
        thousand workers' news must not cost a thousand views each."""
        if changed is not None:
            if changed.spec != WATCHER:
                self.model.worker_changed(changed.spec.key, _view(changed))
        else:
            workers = (
                (key, _view(supervised))
                for key, supervised in self.children.items()
                if supervised.spec != WATCHER
            )
            self.model.daemon_changed(workers, self.stopping, self.config_path)
        watcher = self.children.get(WATCHER.key)  # no worker: its state, in the status line
        self.model.watcher_changed(watcher.child.state.value if watcher else None)
        self.notifier.status(self.model.status_line())


def _owner(spec: WorkerSpec) -> dict[str, str]:
    """The backup or repository a child's events name (the watcher's: none)."""
    return {} if spec == WATCHER else {spec.kind: spec.name}


def _view(supervised: Supervised) -> WorkerView:
    spec = supervised.spec
    state = supervised.child.state.value
    return WorkerView(spec.name, spec.kind, state, supervised.running, supervised.next_run)


def _reply_for_exit(code: int) -> ControlReply:
    """The reply to a client that waited for a worker's run, from its job process's exit."""
    if code == JobExit.OK:
        return {"ok": True}
    return reply_error("failed", "cancelled" if code == JobExit.CANCELLED else "")
