"""What makes a worker start runs (SPEC "Triggers"), composed from the pieces beside it.

A backup's worker has its schedule (intervals and cron, counted from the last success kept
in the state directory) and its watch (inotify, debounced). A maintained repository's
worker has a check schedule and a prune schedule. Every run's start and end is recorded
here, so a restart of the worker, or of the daemon, neither repeats nor loses a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from henbackup.config.model import Backup, Repository, ScheduleEntry
from henbackup.loop import Loop
from henbackup.observe.events import EmitFunction
from henbackup.worker.debounce import Debouncer, DebounceTimer
from henbackup.worker.excludes import Excluder
from henbackup.worker.schedule import Fired, ScheduleTimer
from henbackup.worker.state import StateStore, backup_key, maintenance_key
from henbackup.worker.watch import Watcher

# (trigger, reason, operation): what a trigger asks the worker for.
Request = Callable[[str, str, str], None]


@dataclass
class Scheduled:
    """One operation's schedule and its run record."""

    operation: str
    key: str
    timer: ScheduleTimer
    started: float | None = None  # wall time of the run in progress

    def next_run(self) -> float | None:
        return self.timer.next.when if self.timer.next else None


@dataclass
class Triggers:
    loop: Loop
    store: StateStore
    scheduled: dict[str, Scheduled] = field(default_factory=dict)  # by operation
    debouncer: Debouncer | None = None
    timer: DebounceTimer | None = None
    watcher: Watcher | None = None

    def add_schedule(
        self, operation: str, key: str, entries: tuple[ScheduleEntry, ...], request: Request
    ) -> None:
        if not entries:
            return

        def due(fired: Fired) -> None:
            request(fired.trigger, fired.reason, operation)

        timer = ScheduleTimer(self.loop, entries, due)
        self.scheduled[operation] = Scheduled(operation, key, timer)

    def start(self) -> None:
        for scheduled in self.scheduled.values():
            scheduled.timer.arm(self.store.load(scheduled.key))
        if self.watcher is not None:
            self.watcher.start()

    def job_started(self, operation: str) -> None:
        """Any run of `operation` counts: it saves every change seen so far."""
        scheduled = self.scheduled.get(operation)
        if scheduled is not None:
            scheduled.started = time.time()
            self.store.record_attempt(scheduled.key, scheduled.started)
        if self.debouncer is not None and operation == "backup":
            self.debouncer.backup_started(self.loop.clock())

    def job_finished(self, operation: str, ok: bool) -> None:
        scheduled = self.scheduled.get(operation)
        if scheduled is not None:
            if ok and scheduled.started is not None:
                self.store.record_success(scheduled.key, scheduled.started)
            scheduled.started = None
            scheduled.timer.arm(self.store.load(scheduled.key))
        if self.debouncer is not None and operation == "backup" and self.timer is not None:
            self.debouncer.backup_finished(self.loop.clock())
            self.timer.poke()

    def next_run(self) -> float | None:
        """The soonest scheduled run (epoch seconds), if any."""
        runs = [r for s in self.scheduled.values() if (r := s.next_run()) is not None]
        return min(runs, default=None)


def backup_triggers(
    backup: Backup, loop: Loop, state_dir: Path, emit: EmitFunction, request: Request
) -> Triggers:
    """Schedule and watch of one backup."""
    store = StateStore(state_dir, on_problem=lambda m: emit("job.warning", m, backup=backup.name))
    triggers = Triggers(loop, store)
    triggers.add_schedule("backup", backup_key(backup.name), backup.schedule, request)
    if backup.watch is not None:
        debouncer = Debouncer(backup.watch.wait_min, backup.watch.wait_max)
        timer = DebounceTimer(loop, debouncer, lambda reason: request("watch", reason, "backup"))

        def overflow() -> None:
            message = f"{backup.name}: inotify lost events; a backup will run to catch up"
            emit("watch.overflow", message, backup=backup.name)
            timer.overflowed()

        def limit(message: str) -> None:
            message = f"{backup.name}: {message}; until then only its schedule triggers it"
            emit("watch.limit", message, backup=backup.name)

        triggers.debouncer, triggers.timer = debouncer, timer
        triggers.watcher = Watcher(
            backup.paths, Excluder(backup.excludes), loop, timer.changed, overflow, limit
        )
    return triggers


def maintenance_triggers(
    repository: Repository, loop: Loop, state_dir: Path, emit: EmitFunction, request: Request
) -> Triggers:
    """The check and prune schedules of one repository."""
    name = repository.name
    store = StateStore(state_dir, on_problem=lambda m: emit("job.warning", m, repository=name))
    triggers = Triggers(loop, store)
    for operation, settings in (("check", repository.check), ("prune", repository.prune)):
        if settings is not None:
            key = maintenance_key(name, operation)
            triggers.add_schedule(operation, key, settings.schedule, request)
    return triggers
