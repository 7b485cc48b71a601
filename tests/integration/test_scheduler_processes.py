"""Real job processes contending for slots and repositories through the shared queue.

Each contender is a forked process that queues one ticket, says "queued", then "granted"
at its turn (appending its name to a shared log), holds until told, and says "released".
The test process plays the master where one is needed: it reaps children and nudges.
Synchronisation is by pipes and pidfds only; deadlines are generous, never asserted on.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from henbackup.config.model import Priority
from henbackup.errors import JobCancelled
from henbackup.scheduler import Scheduler, Ticket

DEADLINE = 20.0
IMMEDIATE = Priority(Priority.IMMEDIATE_BAND)
NEXT = Priority(Priority.NEXT_BAND)
ON_IDLE = Priority(Priority.ON_IDLE_BAND)
NORMAL = Priority.ordinary(0)
SUPERIOR = Priority.ordinary(10)
MODES = ("shared", "exclusive")


@dataclass
class Contender:
    """A forked job process and the two pipes the test steers it with."""

    name: str
    pid: int
    said: int  # read end: what the child says, one word per line
    hold: int  # write end: one byte lets a holding child release

    def expect(self, word: str) -> None:
        """Wait (select, generous deadline) for the child to say `word`; fail on anything else."""
        assert self.next_word() == word, f"{self.name} did not say {word}"

    def next_word(self) -> str:
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.said], [], [], DEADLINE)
            assert ready, f"{self.name} said nothing within {DEADLINE}s"
            byte = os.read(self.said, 1)
            assert byte, f"{self.name} exited without a word"
            line += byte
        return line.decode().strip()

    def release(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # it may be gone already
            os.write(self.hold, b"x")

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.pid = 0

    def finish(self) -> None:
        """Let it go if it holds, and reap it."""
        self.release()
        if self.pid:
            _wait_exit(self.pid)
            self.pid = 0
        os.close(self.said)
        os.close(self.hold)


def _wait_exit(pid: int) -> None:
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], DEADLINE)[0]:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    os.waitpid(pid, 0)


def spawn(directory: Path, ticket: Ticket, log: Path | None = None, hold: bool = True):
    """Fork a job process for `ticket`; returns once it has queued (or started)."""
    said_r, said_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(said_r)
        os.close(hold_w)
        code = 1
        try:
            _job(directory, ticket, log, hold, said_w, hold_r)
            code = 0
        finally:
            os._exit(code)
    os.close(said_w)
    os.close(hold_r)
    contender = Contender(ticket.job_id, pid, said_r, hold_w)
    contender.expect("queued")
    return contender


def _job(directory, ticket, log, hold, said, hold_r) -> None:
    """The child: queue, wait for the turn, log it, hold, release."""

    def say(word: str) -> None:
        os.write(said, word.encode() + b"\n")

    waiter = Scheduler(directory).submit(ticket)
    say("queued")
    try:
        grant = waiter.wait(timeout=60)
    except JobCancelled:
        say("cancelled")
        return
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, ticket.job_id.encode() + b"\n")  # one write: atomic with O_APPEND
        os.close(fd)
    say("granted")
    if hold:
        os.read(hold_r, 1)
    grant.release()
    say("released")


def ticket(job_id, priority=NORMAL, repository="r", mode="shared"):
    return Ticket(job_id, repository, priority, mode)


@pytest.fixture
def scheduler(tmp_path):
    queue = Scheduler(tmp_path / "scheduler")
    queue.set_slots(1)
    return queue


def states(scheduler: Scheduler) -> dict[str, str]:
    return {t.job_id: t.state for t in scheduler.queue()}


PRIORITIES = st.one_of(
    st.sampled_from([IMMEDIATE, NEXT, ON_IDLE, SUPERIOR, NORMAL, Priority.ordinary(-10)]),
    st.integers(-2, 2).map(Priority.ordinary),
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    jobs=st.lists(
        st.tuples(PRIORITIES, st.sampled_from(["a", "b"]), st.sampled_from(MODES)),
        min_size=1,
        max_size=8,
    )
)
def test_start_order_is_exactly_the_specified_order(tmp_path_factory, jobs):
    """Jobs arrive in a random order behind a holder of the only slot; when it leaves,
    they start in exactly the order of henbackup.toml(5): priority, then first come first served."""
    directory = tmp_path_factory.mktemp("queue")
    scheduler = Scheduler(directory)
    scheduler.set_slots(1)
    log = directory / "started"
    blocker = scheduler.submit(ticket("blocker")).grant  # everyone queues behind it
    contenders = []
    try:
        for number, (priority, repository, mode) in enumerate(jobs):
            job = ticket(f"j{number}", priority, repository, mode)
            contenders.append(spawn(directory, job, log, hold=False))
            if priority == IMMEDIATE:  # it runs at once, even with no slot free
                contenders[-1].expect("granted")
                contenders[-1].expect("released")
        blocker.release()
        for contender, (priority, _, _) in zip(contenders, jobs, strict=True):
            if priority != IMMEDIATE:
                contender.expect("granted")
                contender.expect("released")
    finally:
        blocker.release()
        for contender in contenders:
            contender.finish()
    expected = sorted(range(len(jobs)), key=lambda n: (-jobs[n][0].band, -jobs[n][0].value, n))
    assert log.read_text().split() == [f"j{n}" for n in expected]


def test_kill_9_of_a_slot_holder_frees_the_slot_for_the_next_job(scheduler, tmp_path):
    directory = tmp_path / "scheduler"
    holder = spawn(directory, ticket("holder"))
    holder.expect("granted")
    waiter = spawn(directory, ticket("waiter"))
    try:
        holder.kill()  # the master reaps it...
        scheduler.nudge()  # ...and nudges the waiters
        waiter.expect("granted")
        assert states(scheduler) == {"waiter": "running"}
        waiter.release()
        waiter.expect("released")
    finally:
        holder.finish()
        waiter.finish()


def test_a_killed_waiter_is_dropped_and_the_next_one_gets_the_slot(scheduler, tmp_path):
    directory = tmp_path / "scheduler"
    holder = scheduler.submit(ticket("holder")).grant
    doomed = spawn(directory, ticket("doomed", SUPERIOR))
    second = spawn(directory, ticket("second"))
    try:
        doomed.kill()  # no nudge: the holder's release re-plans and drops it
        holder.release()
        second.expect("granted")
        assert states(scheduler) == {"second": "running"}
        second.release()
    finally:
        holder.release()
        doomed.finish()
        second.finish()


def test_an_exclusive_check_waits_for_shared_backups_and_blocks_new_ones(scheduler, tmp_path):
    directory = tmp_path / "scheduler"
    scheduler.set_slots(3)  # slots are plenty: only the repository lock decides
    backup_a1 = spawn(directory, ticket("backup-a1", repository="a"))
    backup_a1.expect("granted")
    check = spawn(directory, ticket("check-a", repository="a", mode="exclusive"))
    backup_a2 = spawn(directory, ticket("backup-a2", repository="a"))
    backup_b = spawn(directory, ticket("backup-b", repository="b"))
    everyone = [backup_a1, check, backup_a2, backup_b]
    try:
        backup_b.expect("granted")  # another repository: not held up by the check
        assert states(scheduler) == {
            "backup-a1": "running",
            "backup-b": "running",
            "check-a": "waiting",
            "backup-a2": "waiting",
        }
        backup_a1.release()
        check.expect("granted")
        assert states(scheduler)["backup-a2"] == "waiting"  # the check holds "a" alone
        check.release()
        backup_a2.expect("granted")
        for contender in (backup_a2, backup_b):
            contender.release()
            contender.expect("released")
    finally:
        for contender in everyone:
            contender.finish()


def test_immediate_needs_no_slot_but_respects_an_exclusive_repository(scheduler, tmp_path):
    directory = tmp_path / "scheduler"
    check = spawn(directory, ticket("check-a", repository="a", mode="exclusive"))
    check.expect("granted")  # it holds the only slot and repository "a"
    restore = spawn(directory, ticket("restore-b", IMMEDIATE, repository="b"))
    restore.expect("granted")
    backup = spawn(directory, ticket("backup-a", IMMEDIATE, repository="a"))
    try:
        assert states(scheduler)["backup-a"] == "waiting"
        check.release()
        backup.expect("granted")
        assert {t.slot for t in Scheduler(directory).queue()} == {None}
    finally:
        for contender in (check, restore, backup):
            contender.finish()


def test_on_idle_waits_while_anything_else_waits(scheduler, tmp_path):
    directory = tmp_path / "scheduler"
    holder = scheduler.submit(ticket("holder")).grant
    idle = spawn(directory, ticket("idle", ON_IDLE))
    normal = spawn(directory, ticket("normal", Priority.ordinary(-10), repository="other"))
    try:
        holder.release()
        normal.expect("granted")
        assert states(scheduler)["idle"] == "waiting"
        normal.release()
        idle.expect("granted")
        idle.release()
    finally:
        holder.release()
        for contender in (idle, normal):
            contender.finish()


def test_cancel_reaches_a_waiting_job_process(scheduler, tmp_path):
    holder = scheduler.submit(ticket("holder")).grant
    waiter = spawn(tmp_path / "scheduler", ticket("w"))
    try:
        assert scheduler.cancel("w").state == "waiting"
        waiter.expect("cancelled")
        assert states(scheduler) == {"holder": "running"}
    finally:
        holder.release()
        waiter.finish()


def test_grafana_superior_runs_next_and_a_restore_with_next_jumps_ahead(scheduler, tmp_path):
    """The issue's "done when", with max_concurrent_jobs = 1."""
    directory = tmp_path / "scheduler"
    log = tmp_path / "started"
    running = spawn(directory, ticket("pictures-0", repository="aws"), log)
    running.expect("granted")
    queued = [spawn(directory, ticket(f"pictures-{n}", repository="aws"), log) for n in (1, 2, 3)]
    grafana = spawn(directory, ticket("grafana", SUPERIOR, repository="ovh"), log)
    restore = spawn(directory, ticket("restore", NEXT, repository="aws"), log)
    everyone = [running, *queued, grafana, restore]
    try:
        assert [t.job_id for t in scheduler.queue()] == [
            "pictures-0",
            "restore",
            "grafana",
            "pictures-1",
            "pictures-2",
            "pictures-3",
        ]
        assert scheduler.position("grafana") == 2
        for contender in (running, restore, grafana, *queued):
            if contender is not running:
                contender.expect("granted")
            contender.release()
            contender.expect("released")
        assert log.read_text().split() == [t.name for t in (running, restore, grafana, *queued)]
    finally:
        for contender in everyone:
            contender.finish()
