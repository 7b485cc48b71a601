"""A run that henbackup's own stop interrupted is not a failure: the next start runs it again
at once, while a run that failed waits RETRY_AFTER (schedule.py). Real worker, real forked
job processes, real run records and timerfd alarms; only the job's body is a stand-in (a
sleep, or an exit 1), since what matters here is how its process ends."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, cast

import pytest

from henbackup.channel import Channel
from henbackup.config.model import (
    Backup,
    Config,
    Interval,
    Maintenance,
    PasswordSource,
    Repository,
)
from henbackup.loop import Loop
from henbackup.names import backup_record
from henbackup.worker.main import RunRequest, Worker
from henbackup.worker.schedule import RETRY_AFTER
from henbackup.worker.spec import WorkerSpec
from henbackup.worker.state import ScheduleRecord, StateStore
from henbackup.worker.triggers import Triggers, backup_triggers, maintenance_triggers

BACKUP = Backup("pictures", ("/nowhere",), ("local",), schedule=(Interval(3600, "1h"),))
KEY = backup_record("pictures")
DEADLINE = 30.0  # generous: waited for, never asserted as a duration


def ignore(*args: Any, **fields: Any) -> None:
    pass


def triggers_on(state: Path, asked: list[tuple[str, str, str]] | None = None) -> Triggers:
    """The backup's triggers, as a worker builds them, on `state`."""
    request = asked.append if asked is not None else ignore
    return backup_triggers(BACKUP, Loop(), state, ignore, lambda *a: request(a))


def record(state: Path) -> ScheduleRecord:
    return StateStore(state, pytest.fail).load(KEY)


def succeeded_once(state: Path) -> float:
    """A run that succeeded two hours ago: the next regular one is overdue; returns its start."""
    success = time.time() - 7200
    StateStore(state, pytest.fail).save(KEY, ScheduleRecord(success, success))
    return success


def a_restart(state: Path) -> tuple[Triggers, list[tuple[str, str, str]]]:
    """A new worker's triggers on `state`, started, their loop given a turn."""
    asked: list[tuple[str, str, str]] = []
    triggers = triggers_on(state, asked)
    triggers.start()
    triggers.loop.call_later(0.5, lambda: None)  # a timerfd due now is readable at once
    triggers.loop.run_once()
    return triggers, asked


def sleeps(
    config: Config, spec: WorkerSpec, run: RunRequest, news: Channel, admitted: object
) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(DEADLINE)
    return 0


def fails(
    config: Config, spec: WorkerSpec, run: RunRequest, news: Channel, admitted: object
) -> int:
    return 1


def a_worker(state: Path, body: Any) -> Worker:
    channel, master = Channel.pair()
    worker = Worker(
        WorkerSpec("backup", "pictures", (BACKUP,)),
        cast(Config, None),  # only the job body reads it
        channel,
        ignore,
        body,
        triggers=lambda w: backup_triggers(BACKUP, w.loop, state, ignore, ignore),
    )
    worker.master_end = master  # type: ignore[attr-defined]  # kept open: no EOF to the worker
    assert worker.triggers is not None
    worker.triggers.start()
    worker.request(RunRequest("manual", "asked by the test"))
    assert worker.job is not None
    return worker


def until_idle(worker: Worker) -> None:
    deadline = time.monotonic() + DEADLINE
    while worker.job is not None:
        assert time.monotonic() < deadline, "the job process never ended"
        worker.loop.run_once()


def test_a_run_the_worker_stops_is_run_again_at_the_next_start(tmp_path):
    """SIGTERM to the worker (the daemon stops, or the master died) mid-run: the job process
    is stopped, the record keeps its start and no end, and the next start runs it at once."""
    success = succeeded_once(tmp_path)
    worker = a_worker(tmp_path, sleeps)
    worker.loop.call_later(0.2, worker.shutdown)
    until_idle(worker)
    left = record(tmp_path)
    assert left.last_success == success and left.last_failure is None
    assert left.last_attempt is not None and left.last_attempt > success

    restarted, asked = a_restart(tmp_path)
    assert asked == [("startup", "every 1h, its last run was interrupted", "backup")]
    restarted.timers["backup"].close()


def test_a_run_that_fails_is_retried_after_the_delay_even_across_a_restart(tmp_path):
    succeeded_once(tmp_path)
    worker = a_worker(tmp_path, fails)
    until_idle(worker)
    left = record(tmp_path)
    assert left.last_failure is not None and left.last_failure == left.last_attempt

    restarted, asked = a_restart(tmp_path)
    assert asked == []
    assert restarted.next_run() == pytest.approx(left.last_failure + RETRY_AFTER)
    restarted.timers["backup"].close()


def test_a_killed_master_leaves_the_record_of_a_run_in_progress(tmp_path):
    """kill -9 of the whole family: nothing but the start was written, and that is enough."""
    success = succeeded_once(tmp_path)
    triggers_on(tmp_path).job_started("backup")  # and then nothing more: killed

    restarted, asked = a_restart(tmp_path)
    assert asked == [("startup", "every 1h, its last run was interrupted", "backup")]
    assert record(tmp_path).last_success == success
    restarted.timers["backup"].close()


def test_a_check_and_a_prune_due_together_both_run(tmp_path):
    """One run at a time: the worker turns away the one that falls due second. It is armed
    again when the first ends, so it runs then (it was lost until the worker restarted)."""
    every_hour = Maintenance((Interval(3600, "1h"),))
    password = PasswordSource("password", "unused")
    repository = Repository("nas", "/srv/repo", password, check=every_hour, prune=every_hour)
    running: list[str] = []
    asked: list[tuple[str, str]] = []

    def request(trigger: str, reason: str, operation: str) -> None:
        asked.append((operation, "turned away" if running else "runs"))
        if not running:  # as Worker.request does while a run is in progress
            running.append(operation)
            triggers.job_started(operation)

    triggers = maintenance_triggers(repository, Loop(), tmp_path, ignore, request)
    triggers.start()
    deadline = time.monotonic() + DEADLINE
    while len(asked) < 2:  # both never ran: both due now
        assert time.monotonic() < deadline, asked
        triggers.loop.call_later(0.2, lambda: None)  # a turn never waits for ever
        triggers.loop.run_once()
    first, second = ("check", "prune") if asked[0][0] == "check" else ("prune", "check")
    assert asked == [(first, "runs"), (second, "turned away")]
    running.clear()
    triggers.job_finished(first, ok=True)
    while len(asked) < 3:
        assert time.monotonic() < deadline, asked
        triggers.loop.call_later(0.2, lambda: None)
        triggers.loop.run_once()
    assert asked[2] == (second, "runs")
