"""What makes a worker start runs (henbackup.toml(5), TRIGGERS), composed from the pieces beside it.

A backup's worker has its schedule (intervals and cron, counted from the last success kept
in the state directory) and its watch, debounced: what the watcher process saw of its paths
(watching.py), forwarded by the master. A maintained repository's
worker has a check schedule and a prune schedule. Every run's start and end is recorded
here, so a restart of the worker, or of the daemon, neither repeats nor loses a run (one
that henbackup's stop interrupted has a start and no end: it runs again at the next start).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from henbackup import names
from henbackup.config.model import Backup, Repository, ScheduleEntry
from henbackup.loop import Loop, Timer
from henbackup.observe.events import EmitFunction
from henbackup.worker.debounce import Debouncer, DebounceTimer
from henbackup.worker.schedule import FUTURE_TOLERANCE, RETRY_AFTER, Fired, ScheduleTimer
from henbackup.worker.state import StateStore

# Asks the worker for a run: (trigger, reason, operation).
RequestRun = Callable[[str, str, str], None]


@dataclass
class Triggers:
    loop: Loop
    store: StateStore
    request: RequestRun
    keys: dict[str, str] = field(default_factory=dict)  # each operation's run record
    timers: dict[str, ScheduleTimer] = field(default_factory=dict)  # by operation
    started: dict[str, float] = field(default_factory=dict)  # wall time of runs in progress
    debouncer: Debouncer | None = None
    timer: DebounceTimer | None = None  # set when the backup is watched
    on_overflow: Callable[[], None] = lambda: None
    on_watch_limit: Callable[[str], None] = lambda message: None
    dirty: bool = False  # the watch saw a change since the last backup started
    retry: Timer | None = None  # a failed watched backup's next try, without a schedule

    def add_operation(self, operation: str, key: str, entries: tuple[ScheduleEntry, ...]) -> None:
        """Record the runs of `operation` under `key`, and run it on `entries` (if any)."""
        self.keys[operation] = key
        if entries:

            def due(fired: Fired) -> None:
                self.request(fired.trigger, fired.reason, operation)

            self.timers[operation] = ScheduleTimer(self.loop, entries, due)

    def start(self) -> None:
        for operation, timer in self.timers.items():
            timer.arm(self.store.load(self.keys[operation]))
        watched = self.timer is not None
        record = self.store.load(self.keys["backup"]) if watched else None
        # A change "seen" past tomorrow was written by a wrong clock: no later run would ever
        # count as after it, and each start would run the backup again.
        believable = record and (record.changed_since or 0) <= time.time() + FUTURE_TOLERANCE
        if record and believable and record.unsaved_changes:
            self.dirty = True
            self.request("startup", "changes seen before the daemon stopped", "backup")

    def watch_news(self, changes: int, overflow: bool, limit: str | None) -> None:
        """What the watcher saw of the backup's paths (ignored if it is not watched)."""
        if self.timer is None:
            return
        if limit is not None:
            self.on_watch_limit(limit)
        if overflow:  # lost events: a change, to remember across restarts as well
            self._remember_change()
            self.on_overflow()
        if changes:
            self.changed(changes)

    def changed(self, count: int) -> None:
        """The watch saw `count` changes: debounce them, and remember them across restarts."""
        self._remember_change()
        assert self.timer is not None
        self.timer.changed(count)

    def _remember_change(self) -> None:
        if not self.dirty:
            self.dirty = True  # one write per window of changes, not one per event
            self.store.record_change(self.keys["backup"], time.time())

    def job_started(self, operation: str) -> None:
        """Any run of `operation` counts, whatever triggered it."""
        if operation == "backup" and self.retry is not None:
            self.retry.cancel()
            self.retry = None
        self.started[operation] = time.time()
        self.store.record_attempt(self.keys[operation], self.started[operation])
        if self.debouncer is not None and operation == "backup":
            self.debouncer.backup_started(self.loop.clock())
            self.dirty = False  # it saves every change so far; a new one opens a new window

    def job_finished(self, operation: str, ok: bool, *, stopping: bool = False) -> None:
        """A run of `operation` ended. One that did not succeed while the worker is
        `stopping` was interrupted by henbackup, not failed: its end is not recorded, so
        the next start runs it again at once (schedule.py)."""
        started = self.started.pop(operation, None)
        if started is not None and (ok or not stopping):
            record = self.store.record_success if ok else self.store.record_failure
            record(self.keys[operation], started)
        for other, timer in self.timers.items() if not stopping else ():
            # Its own, and any other that fell due during the run: the worker turned that
            # one away (one run at a time), so it is armed again, due now.
            if other == operation or timer.next is None:
                timer.arm(self.store.load(self.keys[other]))
        if self.timer is not None and self.debouncer is not None and operation == "backup":
            self.debouncer.backup_finished(self.loop.clock())
            self.timer.poke()
            if not ok and not stopping and "backup" not in self.timers:
                self._retry_later()

    def _retry_later(self) -> None:
        """A watched backup without a schedule failed: the changes it was to save are saved
        by another try `RETRY_AFTER` later (a schedule's retry does that for the others)."""
        if self.store.load(self.keys["backup"]).unsaved_changes:
            reason = "its last run failed, and changes are still unsaved"
            self.retry = self.loop.call_later(RETRY_AFTER, lambda: self._retry_now(reason))

    def _retry_now(self, reason: str) -> None:
        self.retry = None
        self.request("watch", reason, "backup")

    def next_run(self) -> float | None:
        """The soonest scheduled run (epoch seconds), if any."""
        runs = [t.next.when for t in self.timers.values() if t.next is not None]
        return min(runs, default=None)


def backup_triggers(
    backup: Backup, loop: Loop, state_dir: Path, emit: EmitFunction, request: RequestRun
) -> Triggers:
    """Schedule and watch of one backup."""
    store = StateStore(
        state_dir,
        on_problem=lambda m: emit("job.warning", m, backup=backup.name),
        on_unsaved=lambda m, e: emit("status.unsaved", m, backup=backup.name, error=e),
    )
    triggers = Triggers(loop, store, request)
    triggers.add_operation("backup", names.backup_record(backup.name), backup.schedule)
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
        triggers.on_overflow, triggers.on_watch_limit = overflow, limit
    return triggers


def maintenance_triggers(
    repository: Repository, loop: Loop, state_dir: Path, emit: EmitFunction, request: RequestRun
) -> Triggers:
    """The check and prune schedules of one repository."""
    name = repository.name
    store = StateStore(
        state_dir,
        on_problem=lambda m: emit("job.warning", m, repository=name),
        on_unsaved=lambda m, e: emit("status.unsaved", m, repository=name, error=e),
    )
    triggers = Triggers(loop, store, request)
    for operation, settings in (("check", repository.check), ("prune", repository.prune)):
        schedule = settings.schedule if settings is not None else ()
        triggers.add_operation(operation, names.maintenance_record(name, operation), schedule)
    return triggers
