"""jobs/lanes.py with a real queue (a directory of the test's) and really forked lanes. The
lanes' body is the test's own, without restic: the subject is who runs when, what each lane
tells, and what a lane that dies leaves (tests/integration/test_side_by_side.py runs restic)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from henbackup.channel import Channel, JobEvent
from henbackup.jobs.job import Job
from henbackup.jobs.lanes import Lanes
from henbackup.jobs.pipeline import Place, RepositoryOutcome, queued, ticket_for
from henbackup.scheduler import locks
from henbackup.scheduler.queue import Grant, Scheduler
from tests.unit.scheduler.test_queue import never_blocked

WAIT = 30.0  # a busy machine; only waited for


def lanes_of(tmp_path: Path, slots: int, events, crash: str = "") -> tuple[Lanes, list[JobEvent]]:
    scheduler = Scheduler(tmp_path / "queue")
    scheduler.set_slots(slots)
    relayed: list[JobEvent] = []
    log = tmp_path / "log"

    def body(job: Job, grant: Grant, channel: Channel) -> RepositoryOutcome:
        if job.repository == crash:
            raise RuntimeError("a bug")
        with queued(job, Scheduler(tmp_path / "queue"), events, grant):
            channel.send(JobEvent("job.started", f"{job.title} started", job.fields()))
            with log.open("a") as file:
                file.write(f"start {job.repository}\n")
            if slots > 1:  # side by side: each waits until every lane has started
                deadline = time.monotonic() + WAIT
                while log.read_text().count("start") < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
            with log.open("a") as file:
                file.write(f"end {job.repository}\n")
        return RepositoryOutcome(job.repository, snapshot_id=f"snap-{job.repository}")

    return Lanes(scheduler, events, relayed.append, body), relayed


def jobs() -> tuple[Job, Job]:
    return Job("backup", "a", "pictures"), Job("backup", "b", "pictures")


def test_with_free_slots_the_repositories_run_side_by_side(tmp_path, events):
    lanes, relayed = lanes_of(tmp_path, 2, events)
    run = jobs()
    outcomes = lanes(run, Place(lanes.scheduler, events, None))
    assert outcomes == [RepositoryOutcome("a", "snap-a"), RepositoryOutcome("b", "snap-b")]
    lines = (tmp_path / "log").read_text().split("\n")
    assert sorted(lines[:2]) == ["start a", "start b"]  # both started before either ended
    assert sorted(e.fields["repository"] for e in relayed) == ["a", "b"]
    assert [e.kind for e in events.recorded] == []  # granted at once: nothing queued
    assert lanes.scheduler.queue() == ()


def test_with_one_slot_they_run_in_turn_in_order_keeping_the_run_s_place(tmp_path, events):
    lanes, _ = lanes_of(tmp_path, 1, events)
    run = jobs()
    outcomes = lanes(run, Place(lanes.scheduler, events, None))
    assert [o.snapshot_id for o in outcomes] == ["snap-a", "snap-b"]
    assert (tmp_path / "log").read_text().splitlines() == ["start a", "end a", "start b", "end b"]
    (queued_b,) = [dict(e.fields) for e in events.recorded if e.kind == "job.queued"]
    assert (queued_b["HENBACKUP_REPOSITORY"], queued_b["HENBACKUP_SEQUENCE"]) == ("b", "1")


def test_a_lane_that_dies_fails_its_job_alone(tmp_path, events):
    lanes, _ = lanes_of(tmp_path, 1, events, crash="a")
    outcomes = lanes(jobs(), Place(lanes.scheduler, events, None))
    assert outcomes[0] == RepositoryOutcome("a", error="its process exited with 70")
    assert outcomes[1].snapshot_id == "snap-b"
    failed = [e for e in events.recorded if e.kind == "job.failed"]
    assert [
        (dict(e.fields)["HENBACKUP_REPOSITORY"], dict(e.fields)["HENBACKUP_ERROR"]) for e in failed
    ] == [("a", "its process exited with 70")]
    assert lanes.scheduler.queue() == ()


def test_a_waiting_repository_cancelled_never_starts_and_the_run_goes_on(tmp_path, events):
    scheduler = Scheduler(tmp_path / "queue")  # one slot: b waits as a ticket while a runs
    a, b = jobs()

    def body(job: Job, grant: Grant, channel: Channel) -> RepositoryOutcome:
        queue = Scheduler(tmp_path / "queue")
        with queued(job, queue, events, grant):
            deadline = time.monotonic() + WAIT
            while b.id not in {t.job_id for t in queue.tickets()}:
                assert time.monotonic() < deadline, "b never queued"
                time.sleep(0.01)
            assert queue.cancel(b.id) is not None  # as `henbackupctl cancel` does
        return RepositoryOutcome(job.repository, snapshot_id="snap-a")

    lanes = Lanes(scheduler, events, lambda _: None, body)
    outcomes = lanes((a, b), Place(scheduler, events, None))
    assert outcomes == [RepositoryOutcome("a", "snap-a"), RepositoryOutcome("b", error="cancelled")]
    kinds = [(e.kind, dict(e.fields)["HENBACKUP_REPOSITORY"]) for e in events.recorded]
    assert kinds == [("job.queued", "b"), ("job.cancelled", "b")]
    assert scheduler.queue() == ()


def test_the_run_s_loop_never_waits_for_a_queue_lock_held_elsewhere(tmp_path, events):
    """Another process holds the queue's lock (a hand-run `henbackup backup` stopped with
    Ctrl-Z) as the run queues its second repository: the run's loop goes on (it relays the
    first lane's events), tries again from a timer, and queues it once the lock is free.
    The holder lets go only once the first lane's job.started is relayed, so a loop that
    waited for the lock would wait for ever: an alarm fails the test instead."""
    scheduler = Scheduler(tmp_path / "queue")  # one slot: a is granted, b must queue
    a, b = jobs()
    place = Place(scheduler, events, scheduler.submit(ticket_for(a)).grant)

    def body(job: Job, grant: Grant, channel: Channel) -> RepositoryOutcome:
        channel.send(JobEvent("job.started", f"{job.title} started", job.fields()))
        with queued(job, Scheduler(tmp_path / "queue"), events, grant):
            pass
        return RepositoryOutcome(job.repository, snapshot_id=f"snap-{job.repository}")

    holder, let_go = hold_queue_lock(scheduler.directory / "lock")
    relayed: list[str] = []

    def relay(event: JobEvent) -> None:
        relayed.append(event.fields["repository"])
        if len(relayed) == 1:
            os.write(let_go, b"x")

    lanes = Lanes(scheduler, events, relay, body)
    with never_blocked(WAIT, lambda: os.write(let_go, b"x")):
        outcomes = lanes((a, b), place)
    os.waitpid(holder, 0)
    assert outcomes == [RepositoryOutcome("a", "snap-a"), RepositoryOutcome("b", "snap-b")]
    assert relayed == ["a", "b"]
    assert scheduler.queue() == ()


def hold_queue_lock(path: Path) -> tuple[int, int]:
    """A process that holds the queue's lock until a byte is written to the fd returned
    with its pid."""
    go_read, go_write = os.pipe()
    held_read, held_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        fd = locks.try_lock(path, locks.EXCLUSIVE)
        os.write(held_write, b"held" if fd is not None else b"")
        os.read(go_read, 1)
        os._exit(0)
    assert os.read(held_read, 4) == b"held"
    for fd in (go_read, held_read, held_write):
        os.close(fd)
    return pid, go_write
