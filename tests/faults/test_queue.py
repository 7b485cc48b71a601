"""A run's job process is forked by its worker only at the run's turn in the host-wide queue
(worker/main.py); what happens when that process cannot start, or dies before it took its
grant over. Real worker loop, real queue (flocks, FIFOs, ticket files), real forks; the only
fake is the kernel refusing a fork (EAGAIN: a full process table or RLIMIT_NPROC, which root
here cannot be made to meet), provoked by replacing os.fork for the worker."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from henbackup import process
from henbackup.channel import Channel, ChannelMessage, JobEvent, JobExit, JobState
from henbackup.config.load import load_config
from henbackup.config.model import Config, Priority
from henbackup.scheduler import Scheduler, Ticket, locks
from henbackup.worker.main import RunRequest, Worker
from henbackup.worker.spec import WorkerSpec

DEADLINE = 30.0  # generous: waited for, never asserted as a duration


def two_repositories(tmp_path: Path) -> Config:
    """Backup `pictures` to repositories `a` and `b` (never opened: no restic runs here)."""
    secret = tmp_path / "password"
    secret.write_text("a password\n")
    secret.chmod(0o600)
    lines = []
    for name in ("a", "b"):
        lines += [f"[repositories.{name}]", f'location = "{tmp_path / name}"']
        lines += [f'password_file = "{secret}"', ""]
    lines += ["[backups.pictures]", f'paths = ["{tmp_path}"]', 'repositories = ["a", "b"]']
    path = tmp_path / "henbackup.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return load_config(path, hostname="testhost", deferred=[])


def run_once(tmp_path: Path, events: Any, body: Any) -> tuple[list[ChannelMessage], Scheduler]:
    """One run of `pictures` by a real worker on a real queue; returns what the master
    heard, up to the run's end, and the queue."""
    scheduler = Scheduler(tmp_path / "scheduler")
    scheduler.set_slots(1)
    channel, master = Channel.pair()
    worker = Worker(
        WorkerSpec("backup", "pictures", ()),
        two_repositories(tmp_path),
        channel,
        events,
        body,
        scheduler=scheduler,
    )
    worker.request(RunRequest("manual", "asked by the test", requests=("r1",)))
    deadline = time.monotonic() + DEADLINE
    while worker.current is not None:
        assert time.monotonic() < deadline, "the run never ended"
        worker.loop.run_once()
    heard: list[ChannelMessage] = []
    master.sock.settimeout(DEADLINE)
    while not any(isinstance(m, JobState) and m.state == "idle" for m in heard):
        heard += master.receive(pytest.fail) or []
    worker.loop.close()
    master.close()
    channel.close()
    return heard, scheduler


def never_runs(*args: Any) -> int:
    raise AssertionError("no job process was to start")


def test_a_job_process_that_cannot_be_forked_fails_each_job_of_the_run(
    tmp_path, events, monkeypatch
):
    def refused() -> int:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(process.os, "fork", refused)
    heard, scheduler = run_once(tmp_path, events, never_runs)
    failed = [m for m in heard if isinstance(m, JobEvent)]
    error = "its job process could not start: [Errno 11] Resource temporarily unavailable"
    assert [(m.kind, m.fields["repository"], m.fields["error"]) for m in failed] == [
        ("job.failed", "a", error),
        ("job.failed", "b", error),
    ]
    assert all(m.requests == ("r1",) for m in failed)
    assert heard[-1] == JobState("idle", None, None, JobExit.FAILED, ("r1",))
    assert scheduler.queue() == ()  # the slot it was granted is free again
    journaled = [e for e in events.recorded if e.kind == "job.failed"]
    assert len(journaled) == 2


def dies_at_once(*args: Any) -> int:
    os._exit(70)  # as a crash before the job process took its ticket over


def test_a_job_process_dead_before_it_took_its_grant_leaves_no_ticket(tmp_path, events):
    # The ticket still names the worker, which lives on: without the worker dropping it, it
    # would look running for as long as the worker lives.
    heard, scheduler = run_once(tmp_path, events, dies_at_once)
    assert heard[-1] == JobState("idle", None, None, 70, ("r1",))
    assert scheduler.queue() == ()
    # It died before it said anything: never silence, each job of the run failed.
    failed = [
        (m.kind, m.fields["repository"], m.fields["error"])
        for m in heard
        if isinstance(m, JobEvent)
    ]
    error = "its job process exited with 70 as it started"
    assert failed == [("job.failed", "a", error), ("job.failed", "b", error)]
    assert scheduler.submit(Ticket("next", "a", Priority.ordinary(0))).grant is not None


def held_queue(tmp_path: Path) -> tuple[Scheduler, Any]:
    """A queue of one slot, held by another job: a run asked now waits."""
    scheduler = Scheduler(tmp_path / "scheduler")
    scheduler.set_slots(1)
    holder = scheduler.submit(Ticket("holder", "elsewhere", Priority.ordinary(0))).grant
    assert holder is not None
    return scheduler, holder


def waiting_worker(
    tmp_path: Path, events: Any, scheduler: Scheduler
) -> tuple[Worker, Channel, Channel]:
    """The worker of `pictures` on `scheduler`, whose job process must never start; its
    channel, and the master's end."""
    channel, master = Channel.pair()
    worker = Worker(
        WorkerSpec("backup", "pictures", ()),
        two_repositories(tmp_path),
        channel,
        events,
        never_runs,
        scheduler=scheduler,
    )
    return worker, channel, master


def test_a_worker_stopped_while_its_run_waits_leaves_the_queue_and_says_so(tmp_path, events):
    scheduler, holder = held_queue(tmp_path)
    worker, channel, master = waiting_worker(tmp_path, events, scheduler)
    worker.request(RunRequest("manual", "asked by the test", requests=("r1",)))
    assert worker.waiter is not None and worker.job is None  # a ticket, not a process
    worker.loop.call_later(0.1, worker.shutdown)
    worker.loop.run()  # returns once the worker stopped
    heard: list[ChannelMessage] = []
    master.sock.settimeout(DEADLINE)
    while not any(isinstance(m, JobState) and m.state == "idle" for m in heard):
        heard += master.receive(pytest.fail) or []
    told = [(m.kind, m.fields["repository"]) for m in heard if isinstance(m, JobEvent)]
    assert told == [("job.queued", "a"), ("job.cancelled", "a")]
    assert heard[-1] == JobState("idle", None, None, JobExit.CANCELLED, ("r1",))
    assert [t.job_id for t in scheduler.queue()] == ["holder"]
    holder.release()
    worker.loop.close()
    master.close()
    channel.close()


def test_a_worker_never_waits_for_a_queue_lock_another_process_holds(tmp_path, events):
    """A hand-run `henbackup backup` stopped (Ctrl-Z) while it held the queue's lock once
    stopped every worker that asked for a run: no heartbeat, and the master killed them all.
    The holder here is another open file of the queue's lock, which flock tells apart."""
    scheduler, holder = held_queue(tmp_path)
    worker, channel, master = waiting_worker(tmp_path, events, scheduler)
    stopped = locks.try_lock(scheduler._lock, locks.EXCLUSIVE)
    assert stopped is not None
    worker.request(RunRequest("manual", "asked by the test", requests=("r1",)))  # returns
    assert worker.waiter is None and worker.entering is not None
    worker.loop.run_once()  # tries again, and waits again
    assert worker.waiter is None and worker.entering is not None
    os.close(stopped)  # the holder goes on
    deadline = time.monotonic() + DEADLINE
    while worker.waiter is None:
        assert time.monotonic() < deadline, "the run never entered the queue"
        worker.loop.run_once()
    assert [t.job_id for t in scheduler.queue()] == ["holder", worker.waiter.ticket.job_id]
    worker.shutdown()
    holder.release()
    worker.loop.close()
    master.close()
    channel.close()


def test_a_worker_stopped_while_its_run_waits_for_the_queue_lock_ends_that_run(tmp_path, events):
    scheduler = Scheduler(tmp_path / "scheduler")
    worker, channel, master = waiting_worker(tmp_path, events, scheduler)
    stopped = locks.try_lock(scheduler._lock, locks.EXCLUSIVE)
    worker.request(RunRequest("manual", "asked by the test", requests=("r1",)))
    worker.shutdown()
    assert worker.entering is None and worker.current is None
    master.sock.settimeout(DEADLINE)
    heard: list[ChannelMessage] = []
    while not any(isinstance(m, JobState) and m.state == "idle" for m in heard):
        heard += master.receive(pytest.fail) or []
    assert heard[-1] == JobState("idle", None, None, JobExit.CANCELLED, ("r1",))
    assert stopped is not None
    os.close(stopped)
    assert scheduler.queue() == ()
    worker.loop.close()
    master.close()
    channel.close()
