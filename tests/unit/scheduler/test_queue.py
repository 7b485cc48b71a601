"""The queue within one process: flock excludes per open file, so one process can contend.

Processes contending for real are in tests/integration/test_scheduler_processes.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from henbackup.config.model import Priority
from henbackup.errors import JobCancelled, QueueBusy, QueueTimeout
from henbackup.loop import Loop
from henbackup.scheduler import Scheduler, Ticket, locks
from henbackup.scheduler import queue as queue_module

NORMAL = Priority.ordinary(0)
DEADLINE = 10.0  # generous: a busy machine must never fail these


@pytest.fixture
def scheduler(tmp_path):
    queue = Scheduler(tmp_path / "scheduler")
    queue.set_slots(1)
    return queue


def ticket(job_id, priority=NORMAL, repository="r", mode="shared"):
    return Ticket(job_id, repository, priority, mode)


def turn_of(waiter):
    """Wait (without polling) until the waiter's fd wakes it and its turn has come."""
    deadline = time.monotonic() + DEADLINE
    while (remaining := deadline - time.monotonic()) > 0:
        if select.select([waiter], [], [], remaining)[0] and waiter.poll() is not None:
            return waiter.grant
    raise AssertionError("the waiter was never granted")


def test_a_free_slot_is_granted_at_once_and_held_until_release(scheduler):
    first = scheduler.submit(ticket("a"))
    assert first.grant is not None and first.grant.ticket.slot == 0
    second = scheduler.submit(ticket("b"))
    assert second.grant is None
    assert [(t.job_id, t.state) for t in scheduler.queue()] == [("a", "running"), ("b", "waiting")]
    first.grant.release()
    assert turn_of(second).ticket.state == "running"
    second.grant.release()
    assert scheduler.queue() == ()


def test_release_wakes_the_highest_priority_waiter(scheduler):
    holder = scheduler.submit(ticket("holder")).grant
    low = scheduler.submit(ticket("low", Priority.ordinary(-10)))
    high = scheduler.submit(ticket("high", Priority.ordinary(10)))
    assert scheduler.position("high") == 1 and low.position() == 2
    holder.release()
    turn_of(high)
    assert low.poll() is None  # its ticket was not touched: nothing to read
    high.grant.release()
    turn_of(low).release()


def test_cancel_of_a_waiting_ticket_reaches_its_waiter(scheduler):
    holder = scheduler.submit(ticket("holder")).grant
    waiter = scheduler.submit(ticket("w"))
    cancelled = scheduler.cancel("w")
    assert cancelled is not None and cancelled.state == "waiting"
    select.select([waiter], [], [], DEADLINE)
    with pytest.raises(JobCancelled):
        waiter.poll()
    assert [t.job_id for t in scheduler.queue()] == ["holder"]
    assert scheduler.cancel_requested(os.getpid()) is None
    assert scheduler.cancel("holder").state == "running"  # running: marked, for its process
    assert scheduler.cancel_requested(os.getpid()) == "holder"
    assert scheduler.cancel_requested(os.getpid() + 1) is None  # only the holder's process
    assert scheduler.cancel("unknown") is None
    assert scheduler.cancel("../lock") is None  # ids come from henbackupctl: never a path
    holder.release()
    assert scheduler.cancel_requested(os.getpid()) is None  # the mark leaves with the ticket
    assert os.listdir(scheduler.directory / "cancelled") == []


def test_blocking_wait_gives_up_after_its_timeout_and_leaves_the_queue(scheduler):
    holder = scheduler.submit(ticket("holder")).grant
    with (
        pytest.raises(QueueTimeout, match="max_concurrent_jobs"),
        scheduler.acquire(ticket("late"), timeout=0.05),
    ):
        pass
    assert [t.job_id for t in scheduler.queue()] == ["holder"]
    holder.release()


def test_acquire_reports_the_position_and_the_stamped_ticket_when_it_has_to_wait(scheduler):
    holder = scheduler.submit(ticket("holder")).grant
    told = []

    def queued(position, stamped):
        told.append((position, stamped.job_id, stamped.sequence, stamped.queued_at > 0))

    with pytest.raises(QueueTimeout), scheduler.acquire(ticket("w"), 0.01, queued):
        pass
    assert told == [(1, "w", holder.ticket.sequence + 1, True)]
    holder.release()
    with scheduler.acquire(ticket("w2"), on_queued=queued) as grant:
        assert grant.ticket.state == "running"
    assert len(told) == 1  # granted at once: not queued


def test_raising_the_slot_count_lets_a_waiter_start(scheduler):
    holder = scheduler.submit(ticket("holder")).grant
    waiter = scheduler.submit(ticket("w"))
    scheduler.set_slots(2)
    assert turn_of(waiter).ticket.slot == 1
    holder.release()
    waiter.grant.release()


def test_lowering_the_slot_count_counts_slots_held_above_it(scheduler):
    scheduler.set_slots(2)
    first = scheduler.submit(ticket("a")).grant
    second = scheduler.submit(ticket("b")).grant
    assert second.ticket.slot == 1
    scheduler.set_slots(1)
    first.release()
    third = scheduler.submit(ticket("c"))
    assert third.grant is None  # slot 1 is still held: one job at a time now
    second.release()
    turn_of(third).release()


def test_the_loop_api_calls_back_at_the_turn(scheduler):
    loop = Loop()
    holder = scheduler.submit(ticket("holder")).grant
    granted = []
    scheduler.request(loop, ticket("w"), granted.append)
    holder.release()
    deadline = time.monotonic() + DEADLINE
    while not granted and time.monotonic() < deadline:
        loop.run_once()
    assert granted and granted[0].ticket.job_id == "w"
    granted[0].release()
    loop.close()


def test_the_loop_api_defers_an_immediate_grant_and_reports_cancellation(scheduler):
    loop = Loop()
    granted, cancelled = [], []
    scheduler.request(loop, ticket("a"), granted.append)
    assert granted == []  # never called back from inside request()
    loop.run_once()
    assert len(granted) == 1
    scheduler.request(loop, ticket("w"), granted.append, lambda: cancelled.append(True))
    scheduler.cancel("w")
    deadline = time.monotonic() + DEADLINE
    while not cancelled and time.monotonic() < deadline:
        loop.run_once()
    assert cancelled == [True] and len(granted) == 1
    granted[0].release()
    loop.close()


def test_a_waiter_that_leaves_before_its_grant_is_handed_over_releases_it(scheduler):
    loop = Loop()
    granted = []
    waiter = scheduler.request(loop, ticket("a"), granted.append)
    waiter.cancel()
    loop.run_once()
    assert granted == [] and scheduler.queue() == ()
    loop.close()


def test_tickets_of_dead_processes_and_torn_files_are_dropped(scheduler, tmp_path):
    tickets = tmp_path / "scheduler" / "tickets"
    dead = Ticket("dead", "r", NORMAL, pid=os.getpid(), start_time=1, sequence=1)
    (tickets / "dead").write_bytes(dead.to_json())
    (tickets / "torn").write_bytes(b'{"job_id": ')
    assert scheduler.queue() == ()
    assert sorted(os.listdir(tickets)) == []


def test_a_dead_holder_ticket_does_not_count_its_slot_twice(scheduler, tmp_path):
    # A ticket left "running" by a killed process: its slot lock died with it.
    ghost = Ticket("ghost", "r", NORMAL, pid=os.getpid(), start_time=1, state="running", slot=0)
    (tmp_path / "scheduler" / "tickets" / "ghost").write_bytes(ghost.to_json())
    granted = scheduler.submit(ticket("a")).grant
    assert granted is not None
    assert [t.job_id for t in scheduler.queue()] == ["a"]
    granted.release()


def test_a_nudge_makes_waiters_replan_once(scheduler, tmp_path):
    holder = scheduler.submit(ticket("holder")).grant
    waiter = scheduler.submit(ticket("w"))
    holder.close_locks()  # as if killed: the kernel lock is gone, nobody woke anyone
    holder.released = True
    scheduler.nudge()
    assert scheduler.nudged()
    assert turn_of(waiter).ticket.job_id == "w"
    assert not scheduler.nudged()  # answered: other waiters go back to sleep
    waiter.grant.release()


def test_a_forked_child_does_not_keep_its_parents_slot(scheduler):
    holder = scheduler.submit(ticket("holder")).grant
    read_end, write_end = os.pipe()
    started_read, started_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds nothing: says so, then blocks until the parent closes the pipe
        os.close(write_end)
        os.write(started_write, b"!")  # the at-fork hook has run by now
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    os.close(started_write)
    assert os.read(started_read, 1) == b"!"
    os.close(started_read)
    try:
        holder.release()
        assert scheduler.submit(ticket("next")).grant is not None
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


def test_job_ids_must_be_plain_names_and_unique(scheduler):
    with pytest.raises(ValueError):
        scheduler.submit(ticket("../escape"))
    grant = scheduler.submit(ticket("same")).grant
    with pytest.raises(ValueError, match="already"):
        scheduler.submit(ticket("same"))
    grant.release()


def test_ticket_files_say_who_and_what(scheduler, tmp_path):
    grant = scheduler.submit(Ticket("j1", "aws", NORMAL, "exclusive", "check")).grant
    data = json.loads((tmp_path / "scheduler" / "tickets" / "j1").read_bytes())
    assert data["pid"] == os.getpid() and data["operation"] == "check"
    assert data["state"] == "running" and data["mode"] == "exclusive"
    grant.release()


# --- the master's side: never waiting for the lock --------------------------------------------


@pytest.mark.timeout(20)  # before: peek, set_slots and cancel waited for the lock forever
def test_the_master_never_waits_for_a_lock_held_elsewhere(scheduler):
    running = scheduler.submit(ticket("a"))
    waiting = scheduler.submit(ticket("b"))
    fd = locks.try_lock(scheduler.directory / "lock", locks.EXCLUSIVE)
    try:
        rewritten = scheduler.directory / "tickets" / "torn"
        rewritten.write_bytes(b'{"job_id": "to')  # a ticket being written right now
        assert [(t.job_id, t.state) for t in scheduler.peek()] == [
            ("a", "running"),
            ("b", "waiting"),
        ]
        assert rewritten.exists()  # not tidied away without the lock
        scheduler.set_slots(2)
        assert (scheduler.directory / "slots").read_text() == "2"
        with pytest.raises(QueueBusy):
            scheduler.cancel("b", wait=False)
    finally:
        os.close(fd)
    assert turn_of(waiting).ticket.slot == 1  # the nudge of set_slots let it start
    assert [t.job_id for t in scheduler.peek()] == ["a", "b"]
    assert not rewritten.exists()  # tidied, the lock being free
    running.grant.release()
    waiting.grant.release()


def test_a_removed_queue_directory_is_an_empty_queue_made_again_by_a_nudge(scheduler):
    shutil.rmtree(scheduler.directory)
    assert scheduler.peek() == ()
    assert scheduler.cancel("a", wait=False) is None
    scheduler.nudge()
    assert (scheduler.directory / "tickets").is_dir() and scheduler.peek() == ()
    shutil.rmtree(scheduler.directory)
    scheduler.set_slots(3)
    assert scheduler.slots() == 3
    submitted = scheduler.submit(ticket("a"))
    assert submitted.grant is not None
    submitted.grant.release()


MEMBERS = ("job_id", "repository", "operation", "backup", "pid", "start_time", "sequence")
ODD = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
ODD_TICKETS = st.one_of(
    st.binary(max_size=40),
    st.integers(1, 50_000).map(lambda n: b"[" * n),
    st.dictionaries(
        st.sampled_from([*MEMBERS, "priority", "mode", "state", "slot", "queued_at"]),
        ODD | st.lists(ODD, max_size=3),
    ).map(lambda data: json.dumps(data).encode()),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=ODD_TICKETS)
@example(raw=b'{"job_id": null, "repository": null, "priority": [false, Infinity]}')
def test_a_ticket_file_of_any_shape_is_skipped_never_raised(scheduler, raw):
    """Ticket files are the queue's own, but read from disk: their shape is checked."""
    holder = scheduler.submit(ticket("a"))
    odd = scheduler.directory / "tickets" / "odd"
    odd.write_bytes(raw)
    try:
        assert [t.job_id for t in scheduler.tickets()] in (["a"], ["a", "odd"])
        assert [t.job_id for t in scheduler.peek()] in (["a"], ["a", "odd"])
        assert [t.job_id for t in scheduler.queue()] in (["a"], ["a", "odd"])
        assert scheduler.cancel("odd", wait=False) in (None, *scheduler.queue())
    finally:
        odd.unlink(missing_ok=True)
        holder.grant.release()


def test_tickets_leaves_the_known_ones_unread(scheduler, monkeypatch):
    """The master knows its own jobs from their events: it reads the tickets of the others
    only (after each job event, 200 waiting tickets read each time cost it seconds)."""
    holder = scheduler.submit(ticket("a"))
    waiting = scheduler.submit(ticket("b"))
    opened: list[str] = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        opened.append(os.path.basename(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    assert [t.job_id for t in scheduler.tickets(known={"a"})] == ["b"]
    assert opened == ["b"]
    assert [t.job_id for t in scheduler.tickets()] == ["a", "b"]
    monkeypatch.undo()
    waiting.cancel()
    holder.grant.release()


def inotify_instances() -> int:
    """The inotify instances this process holds (fs.inotify.max_user_instances counts them)."""
    return sum(os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify" for fd in _fds())


def _fds() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own fd, closed by now
            continue
        found.append(fd)
    return found


def test_waiting_costs_no_inotify_instance(scheduler):
    holder = scheduler.submit(ticket("holder")).grant
    before = inotify_instances()
    waiters = [scheduler.submit(ticket(f"w{i}")) for i in range(20)]
    assert inotify_instances() == before
    holder.release()
    assert turn_of(waiters[0]).ticket.job_id == "w0"
    for waiter in waiters[1:]:
        waiter.cancel()
    waiters[0].grant.release()


def test_a_next_ticket_replacing_a_grant_keeps_the_place_and_the_slot(scheduler):
    first = scheduler.submit(ticket("first", repository="a")).grant
    later = scheduler.submit(ticket("later", repository="b"))  # same priority, came later
    lower = scheduler.submit(ticket("lower", Priority.ordinary(-5), repository="c"))
    assert later.grant is None and lower.grant is None
    kept = replace(ticket("second", repository="b"), sequence=first.ticket.sequence)
    second = scheduler.submit(kept, replacing=first)
    assert first.released
    assert second.grant is not None and second.grant.ticket.sequence == first.ticket.sequence
    assert [t.job_id for t in scheduler.queue()] == ["second", "later", "lower"]
    second.grant.release()
    assert turn_of(later).ticket.job_id == "later"
    later.grant.release()
    assert turn_of(lower).ticket.job_id == "lower"
    lower.grant.release()


def test_a_grant_handed_to_a_forked_child_is_held_by_the_child_alone(scheduler):
    grant = scheduler.submit(ticket("handed")).grant
    waiter = scheduler.submit(ticket("next"))
    read_end, write_end = os.pipe()
    adopted_read, adopted_write = os.pipe()

    def fork() -> int:
        pid = os.fork()
        if pid == 0:  # the job process: takes the ticket over, holds the slot until told
            os.close(write_end)
            cancelled = grant.adopt()
            os.write(adopted_write, b"c" if cancelled else b"a")
            os.read(read_end, 1)
            grant.release()
            os._exit(0)
        return pid

    pid = grant.handed_to_child(fork)
    os.close(read_end)
    os.close(adopted_write)
    try:
        assert os.read(adopted_read, 1) == b"a"
        assert grant.released  # this process's copies are closed...
        (running, _) = scheduler.queue()
        assert (running.job_id, running.pid, running.state) == ("handed", pid, "running")
        assert waiter.poll() is None  # ...and the child's still hold the slot
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)
        os.close(adopted_read)
    assert turn_of(waiter).ticket.job_id == "next"
    waiter.grant.release()


def test_a_ticket_that_cannot_be_marked_running_lets_go_of_its_locks(scheduler, monkeypatch):
    """A full disk is faked (the rewrite raises ENOSPC): a real one cannot be made here."""

    def full(_ticket):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(scheduler, "_rewrite", full)
    with pytest.raises(OSError, match="No space left"):
        scheduler.submit(ticket("a", mode="exclusive"))
    assert locks.is_free(scheduler.directory / "slot-0", locks.EXCLUSIVE)
    assert locks.is_free(scheduler._repository_path("r"), locks.EXCLUSIVE)
    assert os.listdir(scheduler.directory / "tickets") == []
    monkeypatch.undo()
    again = scheduler.submit(ticket("b"))
    assert again.grant is not None and again.grant.ticket.slot == 0
    again.grant.release()


def test_a_nudge_that_cannot_be_marked_still_makes_waiters_replan(scheduler, monkeypatch):
    """A full disk is faked: the nudge file is /dev/full (write(2) gives ENOSPC). The nudge
    never raises (the master goes on handling the death), and wakes the waiters as for a
    turn, since no mark says a nudge came."""
    holder = scheduler.submit(ticket("holder")).grant
    waiter = scheduler.submit(ticket("w"))
    holder.close_locks()  # as if killed: the kernel lock is gone, nobody woke anyone
    holder.released = True
    monkeypatch.setattr(scheduler, "_nudge", Path("/dev/full"))
    scheduler.nudge()
    assert turn_of(waiter).ticket.job_id == "w"
    waiter.grant.release()


@pytest.mark.parametrize("job_id", ["", "../lock", "other"])
def test_a_ticket_whose_id_is_not_its_file_name_is_dropped_as_malformed(scheduler, job_id):
    """`_drop` removes tickets/JOB_ID: an id of "" or "../lock" read from a file would make
    it remove the tickets directory (which fails) or the queue's lock file."""
    stale = scheduler.directory / "tickets" / "stale"
    stale.write_bytes(replace(ticket("x"), job_id=job_id, pid=1 << 22).to_json())
    assert scheduler.peek() == ()
    assert not stale.exists()
    assert (scheduler.directory / "lock").exists()
    granted = scheduler.submit(ticket("a")).grant
    assert granted is not None
    granted.release()


def test_a_next_ticket_that_cannot_be_written_passes_the_freed_slot_on(scheduler, monkeypatch):
    """A full disk is faked (`_enter` raises ENOSPC): the grant it replaced is released all
    the same, and the job waiting behind is woken to take the slot."""
    first = scheduler.submit(ticket("first", repository="a")).grant
    behind = scheduler.submit(ticket("behind", repository="b"))

    def full(_ticket):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(scheduler, "_enter", full)
    with pytest.raises(OSError, match="No space left"):
        scheduler.submit(ticket("second", repository="a"), replacing=first)
    monkeypatch.undo()
    assert first.released
    assert turn_of(behind).ticket.job_id == "behind"
    behind.grant.release()


def test_the_loop_api_never_waits_for_a_queue_lock_held_elsewhere(scheduler):
    """A holder of the queue's lock stopped with SIGSTOP (a hand-run `henbackup backup` and
    Ctrl-Z): a woken waiter's loop goes on, tries again on a timer, and takes its turn once
    the lock is free. (A second open file of this process stands in for the holder; an
    alarm turns a wait in flock into a failure.)"""
    loop = Loop()
    holder = scheduler.submit(ticket("holder")).grant
    granted = []
    scheduler.request(loop, ticket("w"), granted.append)
    held = locks.try_lock(scheduler.directory / "lock", locks.EXCLUSIVE)
    holder.close_locks()  # as if released: its slot is free, and "w" is told so
    holder.released = True
    (scheduler.directory / "tickets" / "holder").unlink()
    wake = os.open(scheduler.directory / "wake" / "w", os.O_WRONLY | os.O_NONBLOCK)
    os.write(wake, b"w")
    os.close(wake)

    with never_blocked():
        for _ in range(3):  # the FIFO's wake-up, then the retries
            loop.run_once()
    assert granted == []
    os.close(held)
    deadline = time.monotonic() + DEADLINE
    while not granted and time.monotonic() < deadline:
        loop.run_once()
    assert granted and granted[0].ticket.job_id == "w"
    granted[0].release()
    loop.close()


@contextlib.contextmanager
def never_blocked(seconds=2.0, unstick=lambda: None):
    """An alarm turns a wait in flock (for a lock this process holds too) into a failure,
    after `unstick()` let the lock go (what stops after it may need the lock)."""

    def stuck(*_):
        unstick()
        raise AssertionError("the loop waited for the queue's lock")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_until(loop, done):
    deadline = time.monotonic() + DEADLINE
    while not done() and time.monotonic() < deadline:
        loop.run_once()
    return done()


def test_a_worker_forgets_its_ticket_and_cancels_a_wait_without_waiting_for_the_lock(scheduler):
    """While another process holds the queue's lock (maybe stopped), `forget_own` and
    `Waiter.cancel` with a loop return at once; the ticket goes from a timer once the lock
    is free."""
    loop = Loop()
    tickets = scheduler.directory / "tickets"
    holder = scheduler.submit(ticket("holder")).grant
    waiter = scheduler.submit(ticket("w"))
    held = locks.try_lock(scheduler.directory / "lock", locks.EXCLUSIVE)
    with never_blocked():
        scheduler.forget_own("holder", loop)
        waiter.cancel(loop)
        loop.run_once()
    assert sorted(os.listdir(tickets)) == ["holder", "w"]
    os.close(held)
    assert run_until(loop, lambda: os.listdir(tickets) == [])
    holder.close_locks()
    loop.close()


def test_a_woken_waiter_polled_while_the_lock_is_held_elsewhere_says_busy(scheduler):
    """`poll` never waits for the queue's lock; what the FIFO told is kept for the next."""
    holder = scheduler.submit(ticket("holder")).grant
    waiter = scheduler.submit(ticket("w"))
    held = locks.try_lock(scheduler.directory / "lock", locks.EXCLUSIVE)
    holder.close_locks()  # as if killed: its slot is free
    holder.released = True
    scheduler.nudge()
    with never_blocked():
        assert waiter.poll() is None and waiter.busy
    os.close(held)
    assert waiter.poll() is not None and not waiter.busy
    assert waiter.grant.ticket.job_id == "w"
    waiter.grant.release()


def killed_holder(scheduler, job_id="holder"):
    """A process that takes the only slot and is killed with SIGKILL: its slot is free, and
    no one is told (no parent of ours reaps it: a `henbackup backup` run by hand)."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            grant = scheduler.submit(ticket(job_id)).grant
            os.write(ready_write, b"!" if grant is not None else b"?")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"!"
    os.close(ready_read)
    return pid


def test_a_blocking_wait_behind_a_killed_holder_takes_the_slot_at_its_next_replan(
    scheduler, monkeypatch
):
    """Before: the wait slept on its FIFO until its timeout, though the slot was free."""
    monkeypatch.setattr(queue_module, "REPLAN_EVERY", 0.2)
    pid = killed_holder(scheduler)
    waiter = scheduler.submit(ticket("w"))
    assert waiter.grant is None
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with waiter.wait(timeout=DEADLINE) as grant:
        assert grant.ticket.job_id == "w"
        assert [t.job_id for t in scheduler.queue()] == ["w"]


def test_replan_wakes_a_loop_waiter_behind_a_killed_holder(scheduler):
    """What the master does every REPLAN_EVERY seconds while one of its jobs waits."""
    loop = Loop()
    pid = killed_holder(scheduler)
    granted = []
    scheduler.request(loop, ticket("w"), granted.append)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    loop.call_later(0.1, lambda: None)
    loop.run_once()
    assert granted == []  # nobody told it
    scheduler.replan()
    assert run_until(loop, lambda: granted)
    assert granted[0].ticket.job_id == "w"
    granted[0].release()
    loop.close()


def test_replan_never_waits_for_a_queue_lock_held_elsewhere(scheduler):
    held = locks.try_lock(scheduler.directory / "lock", locks.EXCLUSIVE)
    try:
        with never_blocked():
            scheduler.replan()
    finally:
        os.close(held)


def test_a_loop_waiter_whose_turn_cannot_be_written_fails_and_leaves_the_queue(
    scheduler, monkeypatch
):
    """A full /run is faked (the rewrite at its turn raises ENOSPC): the waiter's caller
    hears of it; its loop goes on, and its ticket has left the queue."""
    loop = Loop()
    holder = scheduler.submit(ticket("holder")).grant
    granted, failed = [], []
    scheduler.request(loop, ticket("w"), granted.append, on_failed=failed.append)

    def full(_ticket):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(scheduler, "_rewrite", full)
    holder.release()
    assert run_until(loop, lambda: failed)
    assert granted == [] and failed[0].errno == errno.ENOSPC
    monkeypatch.undo()
    assert scheduler.queue() == ()
    assert scheduler.submit(ticket("next")).grant is not None
    loop.close()


def test_a_grant_released_from_a_loop_never_waits_for_the_queue_lock(scheduler):
    """While another process holds the lock: the slot is free at once, the ticket gone,
    and the waiters nudged (they re-plan once the lock is free)."""
    holder = scheduler.submit(ticket("holder")).grant
    waiter = scheduler.submit(ticket("w"))
    held = locks.try_lock(scheduler.directory / "lock", locks.EXCLUSIVE)
    try:
        with never_blocked():
            holder.release(wait=False)
    finally:
        os.close(held)
    assert holder.released and scheduler.nudged()
    assert turn_of(waiter).ticket.job_id == "w"
    assert [t.job_id for t in scheduler.queue()] == ["w"]
    waiter.grant.release()
