"""The host-wide job queue: tickets in files, slots and repositories as kernel locks.

Layout of the directory ($RUNTIME_DIRECTORY/scheduler):

    lock              flock'ed around every change of the queue
    tickets/JOB_ID    one JSON ticket per waiting or running job
    wake/JOB_ID       a FIFO its waiter reads: "w" its turn may have come, "n" a nudge
    sequence          the last arrival number given out
    slots             max_concurrent_jobs, set by the master
    slot-N            flock'ed LOCK_EX by the job holding slot N, for its whole life
    repository-NAME   flock'ed LOCK_SH by jobs using the repository, LOCK_EX by check/prune
    nudge             appended to by the master when it reaps a child
    cancelled/JOB_ID  a running job asked to stop (its process is then sent SIGUSR1)
    paused/PID        the programs of job process PID are paused by the master (preemption:
                      limits/pause.py); `slots` then lends their slot to the job they yield to

Who may run is decided by `plan()` over the tickets and the kernel's view of the locks, by
whichever process changes the queue (a job arriving, releasing, leaving): it takes its own
turn if it is its turn, and writes "w" into the wake FIFO of every other job whose turn it
is (or whose ticket it withdrew: the waiter then finds its ticket gone, "you were
cancelled"). A waiter sleeps on its FIFO (opened read-write: it never sees an end of file),
so waiting costs one file descriptor, not an inotify instance (fs.inotify.max_user_instances
is 128 per user by default, and the watches of the backups need them).

A job killed with SIGKILL cannot say it is leaving, and a lock released by the kernel wakes
nobody. So whoever reaps job processes (the master, a worker) calls `nudge()` after each
death that was not an orderly end (a release re-plans by itself): it marks the nudge file
and writes "n" into every FIFO, and the first waiter to take the queue lock re-plans
(dropping the dead ticket, waking the next job). The others see it done and go back to
sleep. Slots and repository locks are free the moment the holder dies; only the wake-up
waits for the nudge. A job run by hand has no parent of ours to nudge when it is killed:
while jobs wait, the master re-plans every REPLAN_EVERY seconds (`replan`, one lock turn
for the whole host, not one per waiter), and a blocking wait re-plans as often.

A worker waits for its job's turn in its own loop (`request`: woken, it only tries the queue
lock, and tries again on a timer while another process, maybe a stopped one, holds it) and
forks the job process only then, handing it the Grant (`Grant.handed_to_child`: the flocks
are inherited across fork, the worker closes its copies); the job process takes the ticket
as its own (`Grant.adopt`).
A backup's next repository keeps its place: its ticket replaces the running one in a single
turn of the lock (`submit(..., replacing=grant)`), with the same arrival number, so no job
that came later, nor one of lower priority, takes the slot in between.

The master's loop never waits for the queue lock (a job process, even a frozen one, may
hold it): it knows its own jobs from their events (observe/status.py) and reads the
tickets of others with `tickets()`, without the lock; it cancels with `cancel(wait=False)`,
and sets the slots and nudges without the lock at all. If the directory is removed under
it, the master sees an empty queue and makes the directory again at its next nudge or
reload.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import select
import stat
import time
import weakref
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

from henbackup.errors import JobCancelled, QueueBusy, QueueTimeout
from henbackup.files import write_atomically
from henbackup.process import NEVER, SafePoint
from henbackup.scheduler import locks
from henbackup.scheduler.procs import alive, start_time
from henbackup.scheduler.ticket import JOB_ID as _JOB_ID
from henbackup.scheduler.ticket import Mode, Ticket, in_order, plan

if TYPE_CHECKING:
    from henbackup.loop import Loop, Timer

_LOCK_MODES = {"shared": locks.SHARED, "exclusive": locks.EXCLUSIVE}
_TURN, _NUDGE = b"w", b"n"  # what a wake FIFO is told
T = TypeVar("T")
PAUSE_MARKS = "paused"  # the directory of the paused job processes' marks
# A loop never waits for the queue's lock (its holder may be stopped: Ctrl-Z of a hand-run
# `henbackup backup`): it tries again this often meanwhile.
BUSY_RETRY = 0.25
# Seconds between two re-plans of a queue where jobs wait (see Scheduler.replan).
REPLAN_EVERY = 30.0


class Scheduler:
    """The queue in `directory`; any number of processes may each open it.

    A blocking wait for a turn acts on the signals of this process at `safe_point`: it
    wakes as one comes, and never with the queue's lock held.
    """

    def __init__(self, directory: str | os.PathLike[str], safe_point: SafePoint = NEVER) -> None:
        self.directory = Path(directory)
        self.safe_point = safe_point
        self._tickets = self.directory / "tickets"
        self._cancelled = self.directory / "cancelled"
        self._lock = self.directory / "lock"
        self._wake = self.directory / "wake"
        self._nudge = self.directory / "nudge"
        self._make_layout()

    def _make_layout(self) -> None:
        self._tickets.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cancelled.mkdir(mode=0o700, exist_ok=True)
        self._wake.mkdir(mode=0o700, exist_ok=True)
        self._nudge.touch(mode=0o600, exist_ok=True)

    # -- public API --------------------------------------------------------------------

    def set_slots(self, count: int) -> None:
        """Set max_concurrent_jobs for the whole host (the master, at start and on reload).

        Lowering it never stops a running job: new jobs start once enough slots are free.
        Never waits: the file is replaced whole, and a nudge makes the waiters re-plan.
        """
        if count < 1:
            raise ValueError("max_concurrent_jobs must be at least 1")
        self._make_layout()
        write_atomically(self.directory / "slots", str(count).encode())
        self.nudge()

    def slots(self) -> int:
        """The current max_concurrent_jobs (1 until the master sets it)."""
        try:
            return max(1, int((self.directory / "slots").read_bytes()))
        except (FileNotFoundError, ValueError):
            return 1

    def submit(self, ticket: Ticket, replacing: Grant | None = None, wait: bool = True) -> Waiter:
        """Enter the queue; returns a Waiter, already granted when the job may start at once.

        A ticket with a `sequence` keeps that arrival (a backup's next repository keeps its
        first one's place); without, it gets the next one. `replacing`: a grant of this
        process released in the same turn of the lock, so that nothing that waits behind
        this ticket takes its slot in between. Raises ValueError when `ticket.job_id` is not
        a plain name or is already queued, OSError when the queue cannot be written (then
        `replacing` is released anyway). Without `wait` (a loop, and no `replacing`), raises
        QueueBusy rather than wait for another process to release the queue's lock.
        """
        if not _JOB_ID.fullmatch(ticket.job_id):
            if replacing is not None:
                replacing.release()
            raise ValueError(f"job id {ticket.job_id!r} is not a plain name")
        wake_fd = -1
        try:
            with self._locked(wait):
                if replacing is not None:
                    self._let_go(replacing)
                stamped: Ticket | None = None
                try:
                    stamped = self._enter(ticket)
                    wake_fd = self._open_wake(stamped)
                    grant = self._dispatch(stamped)
                except BaseException:  # e.g. a full disk: a slot let go goes to the next
                    if stamped is not None:
                        self._drop(stamped)
                    self._dispatch(None)
                    raise
        except BaseException:
            if replacing is not None:
                replacing.close_locks()
            if wake_fd >= 0:
                os.close(wake_fd)
            raise
        return Waiter(self, stamped, wake_fd, grant)

    @contextlib.contextmanager
    def acquire(
        self,
        ticket: Ticket,
        timeout: float | None = None,
        on_queued: Callable[[int, Ticket], None] | None = None,
    ) -> Iterator[Grant]:
        """Wait for the job's turn (blocking), hold its slot and repository for the block.

        `on_queued(position, ticket)` is called once if the job has to wait, with its
        ticket as stamped (arrival number, time). Raises QueueTimeout
        after `timeout` seconds, JobCancelled if the ticket is cancelled while waiting;
        either way the ticket has left the queue.
        """
        waiter = self.submit(ticket)
        if waiter.grant is None and on_queued is not None:
            try:
                on_queued(waiter.position() or 1, waiter.ticket)
            except BaseException:
                waiter.cancel()
                raise
        with waiter.wait(timeout) as grant:
            yield grant

    def request(
        self,
        loop: Loop,
        ticket: Ticket,
        on_granted: Callable[[Grant], None],
        on_cancelled: Callable[[], None] | None = None,
        wait: bool = True,
        on_failed: Callable[[OSError], None] | None = None,
    ) -> Waiter:
        """Enter the queue without blocking; `on_granted(grant)` runs in `loop` at the job's turn.

        `on_cancelled()` runs if another process cancels the ticket; `on_failed(error)` if
        the queue could not be written at its turn (a full /run): the ticket has then left
        the queue. Returns the Waiter: its `cancel()` leaves the queue (or releases a grant
        not yet handed over). Without `wait`, QueueBusy when another process holds the
        queue's lock (see `submit`).
        """
        waiter = self.submit(ticket, wait=wait)
        if waiter.grant is not None:
            loop.call_later(0, lambda: waiter.hand_over(on_granted))
            return waiter
        fd = waiter.fileno()
        retry: Timer | None = None

        def ready() -> None:
            nonlocal retry
            if retry is not None:
                retry.cancel()
                retry = None
            try:
                if waiter.poll() is not None:
                    waiter.hand_over(on_granted)
                elif waiter.busy:  # what the FIFO told is kept for the retry
                    retry = loop.call_later(BUSY_RETRY, ready)
            except JobCancelled:
                if on_cancelled is not None:
                    on_cancelled()
            except OSError as error:  # ENOSPC writing its ticket: never the caller's loop
                if on_failed is None:
                    raise
                waiter.cancel(loop)
                on_failed(error)

        def closed() -> None:
            loop.remove_reader(fd)
            if retry is not None:
                retry.cancel()

        loop.add_reader(fd, ready)
        waiter.on_close = closed
        return waiter

    def queue(self) -> tuple[Ticket, ...]:
        """Running tickets (in arrival order), then waiting ones in the order they will run.

        Drops the tickets of dead processes on the way.
        """
        with locks.locked(self._lock):
            return _in_queue_order(self._tidy())

    def tickets(self, known: Container[str] = ()) -> tuple[Ticket, ...]:
        """The living tickets in queue order, read as the files are: never takes the lock,
        never changes anything (a ticket rewritten at that very moment is left out, dead
        ones are skipped). Empty when the directory is gone or cannot be read: the daemon's
        own jobs are known from their events anyway. The tickets of the job ids in `known`
        (the caller has them already) are not read: the master looks after each job event,
        and reading 200 waiting tickets each time cost it 35 ms of CPU per job."""
        try:
            read = self._read_tickets(tidy=False, skip=known)
            return _in_queue_order(t for t in read if _alive(t))
        except OSError:
            return ()

    def peek(self) -> tuple[Ticket, ...]:
        """What `queue()` returns, without ever waiting for the lock (for the master's loop):
        tidied when the lock is free at once, else read as the files are (a ticket rewritten
        at that very moment is left out, dead ones are only skipped). Empty when the
        directory is gone."""
        try:
            fd = locks.try_lock(self._lock, locks.EXCLUSIVE)
            if fd is None:
                return _in_queue_order(t for t in self._read_tickets(tidy=False) if _alive(t))
            try:
                return _in_queue_order(self._tidy())
            finally:
                os.close(fd)
        except FileNotFoundError:
            return ()

    def _tidy(self) -> list[Ticket]:
        """Under the lock: the living tickets, the dead ones dropped."""
        tickets = self._read_tickets()
        living = [t for t in tickets if _alive(t)]
        if len(living) < len(tickets):
            for ticket in set(tickets) - set(living):
                self._drop(ticket)
            self._dispatch(None)  # a dead ticket may have held others back
        return living

    def position(self, job_id: str) -> int | None:
        """1 for the job that runs next, 2 after it...; None when not waiting."""
        waiting = [t for t in self.peek() if t.state == "waiting"]  # a loop may ask
        for position, ticket in enumerate(waiting, start=1):
            if ticket.job_id == job_id:
                return position
        return None

    def cancel(
        self, job_id: str, wait: bool = True, spare: Callable[[Ticket], bool] | None = None
    ) -> Ticket | None:
        """Withdraw a waiting ticket (its waiter gets JobCancelled / on_cancelled), or mark a
        running one as cancelled; a ticket that `spare` is true of is left as it is.

        Returns the ticket as it was, or None if unknown. A running job is not stopped here:
        the caller sends its process (`ticket.pid`) SIGUSR1, and the process asks
        `cancel_requested()` which of its jobs that means. Without `wait`, raises QueueBusy
        rather than wait for another process to release the queue's lock. `spare` looks at
        the ticket read under the lock: one read without it may be missed while rewritten.
        """
        if not _JOB_ID.fullmatch(job_id):
            return None  # not a name a ticket can have (nor a path out of the directory)
        try:
            with self._locked(wait):
                ticket = self._read(self._tickets / job_id)
                if ticket is not None and spare is not None and spare(ticket):
                    return ticket
                if ticket is not None and ticket.state == "waiting":
                    self._drop(ticket)
                    self._dispatch(None)
                elif ticket is not None:
                    (self._cancelled / job_id).touch(mode=0o600)
                return ticket
        except FileNotFoundError:  # the directory is gone, and every ticket with it
            return None

    @contextlib.contextmanager
    def _locked(self, wait: bool) -> Iterator[None]:
        """The queue lock for the block; without `wait`, QueueBusy if another process has it."""
        if wait:
            with locks.locked(self._lock):
                yield
            return
        fd = locks.try_lock(self._lock, locks.EXCLUSIVE)
        if fd is None:
            raise QueueBusy("the job queue is locked by another process")
        try:
            yield
        finally:
            os.close(fd)

    def cancel_requested(self, pid: int) -> str | None:
        """The id of a running job of process `pid` that was marked cancelled, if any."""
        with locks.locked(self._lock), os.scandir(self._cancelled) as entries:
            for entry in entries:
                ticket = self._read(self._tickets / entry.name)
                if ticket is not None and ticket.pid == pid and ticket.state == "running":
                    return ticket.job_id
        return None

    def nudge(self) -> None:
        """Make waiters re-plan: call after reaping a child that may have held a ticket.

        Not after a job process that ended in order (exit 0, 1 or 3): its release already
        re-planned, and a nudge wakes every waiter (at 200 due backups, their wake-ups cost
        18 ms of CPU per job).

        Lock-free and cheap (appends a byte): fine to call from the master's loop. Makes the
        directory again if it was removed. Never raises: when the mark cannot be written
        (a full disk), every waiter is told it may be its turn instead, so each re-plans
        (waiters have no timer of their own: a lost nudge would leave them asleep).
        """
        told = _NUDGE if self._mark_nudge() else _TURN
        with contextlib.suppress(OSError), os.scandir(self._wake) as entries:
            for entry in entries:
                _poke(entry.path, told)

    def _mark_nudge(self) -> bool:
        """Append to the nudge file; whether it could be."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self._nudge, flags, 0o600)
            except FileNotFoundError:
                self._make_layout()
                fd = os.open(self._nudge, flags, 0o600)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
        except OSError:  # ENOSPC, EDQUOT, EROFS: a nudge is only a hint
            return False
        return True

    def replan(self) -> None:
        """Re-plan now unless another process holds the queue's lock (then it re-plans):
        drop the tickets of dead processes, wake whoever's turn it is. Never waits.

        The safety net under the nudges: a job run by hand (`henbackup backup`) that is
        killed has no parent of ours to nudge; its slot is free, and nobody is woken. The
        master calls this every REPLAN_EVERY seconds while one of its jobs waits, and a
        blocking wait re-plans as often.
        """
        with contextlib.suppress(QueueBusy, OSError), self._locked(wait=False):
            self._dispatch(None)

    def forget_own(self, job_id: str, loop: Loop | None = None) -> None:
        """Drop ticket `job_id` if this process still owns it (a worker whose job process
        died before it took its grant over: the ticket would otherwise look alive for as
        long as the worker lives). With `loop`, never waits for the queue's lock: while
        another process holds it, tries again from a timer (should this process end
        first, its ticket dies with it)."""
        if not _JOB_ID.fullmatch(job_id):
            return
        try:
            with self._locked(wait=loop is None):
                ticket = self._read(self._tickets / job_id)
                if ticket is not None and ticket.pid == os.getpid():
                    self._drop(ticket)
                    self._dispatch(None)
        except QueueBusy:
            assert loop is not None
            loop.call_later(BUSY_RETRY, lambda: self.forget_own(job_id, loop))

    # -- under the queue lock ------------------------------------------------------------

    def _enter(self, ticket: Ticket) -> Ticket:
        """Stamp `ticket` with its owner and arrival (unless it keeps one), write its file."""
        started = start_time(os.getpid())
        stamped = replace(
            ticket,
            pid=os.getpid(),
            start_time=started or 0,
            sequence=ticket.sequence or self._next_sequence(),
            state="waiting",
            slot=None,
            queued_at=time.time(),
        )
        path = self._ticket_path(stamped)
        existing = self._read(path)
        if existing is not None and _alive(existing):
            raise ValueError(f"job {ticket.job_id} is already in the queue")
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, stamped.to_json())
        finally:
            os.close(fd)
        return stamped

    def _dispatch(self, own: Ticket | None) -> Grant | None:
        """Re-plan: take `own`'s turn if it has come (returns its Grant), wake the others."""
        self._clear_nudge()
        tickets = self._read_tickets()
        for ticket in tickets:
            if ticket.state == "running" and not _alive(ticket):
                self._drop(ticket)
        starting, dead = plan(in_order(tickets), self._free_slots(), self._repository_free, _alive)
        for ticket in dead:
            self._drop(ticket)
        grant = None
        for ticket in starting:
            if own is not None and (ticket.job_id, ticket.sequence) == (own.job_id, own.sequence):
                grant = self._take(ticket)
            else:
                self._wake_up(ticket)
        return grant

    def _take(self, ticket: Ticket) -> Grant | None:
        """Lock a slot (unless immediate) and the repository, and mark the ticket running."""
        slot_fd, slot = None, None
        if ticket.needs_slot:
            for index in range(self.slots()):
                slot_fd = locks.try_lock(self.directory / f"slot-{index}", locks.EXCLUSIVE)
                if slot_fd is not None:
                    slot = index
                    break
            else:
                return None  # plan() saw a free slot under this same lock: cannot happen
        repository_fd = locks.try_lock(
            self._repository_path(ticket.repository), _LOCK_MODES[ticket.mode]
        )
        if repository_fd is None:
            if slot_fd is not None:
                os.close(slot_fd)
            return None
        running = ticket.running(slot)
        try:
            self._rewrite(running)
        except BaseException:  # e.g. a full disk: the locks must not outlive the failed turn
            for fd in (repository_fd, slot_fd):
                if fd is not None:
                    os.close(fd)
            raise
        return Grant(self, running, slot_fd, repository_fd)

    def _rewrite(self, ticket: Ticket) -> None:
        # In place, not renamed over: a waiter of the previous version watches its ticket's
        # inode (inotify). A failed write leaves the file torn; `_read` drops torn files.
        with open(self._ticket_path(ticket), "wb") as file:
            file.write(ticket.to_json())

    def _release(self, grant: Grant) -> None:
        self._let_go(grant)
        self._dispatch(None)

    def _let_go(self, grant: Grant) -> None:
        """Under the lock: `grant`'s ticket leaves, its locks are closed (no re-plan yet)."""
        grant.released = True
        self._drop(grant.ticket)
        grant.close_locks()

    def _open_wake(self, ticket: Ticket) -> int:
        """Make `ticket`'s wake FIFO; returns its fd, opened read-write (never an EOF)."""
        path = self._wake / ticket.job_id
        path.unlink(missing_ok=True)
        os.mkfifo(path, 0o600)
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def _withdraw(self, ticket: Ticket) -> None:
        self._drop(ticket)
        self._dispatch(None)  # leaving may let others go: on-idle jobs, repository claims

    def _free_slots(self) -> int:
        """Slots free by the kernel's account: held slot files, whatever their number, count."""
        slots = [name for name in os.listdir(self.directory) if name.startswith("slot-")]
        held = sum(not locks.is_free(self.directory / name, locks.EXCLUSIVE) for name in slots)
        return max(0, self.slots() - held)

    def _repository_free(self, repository: str, mode: Mode) -> bool:
        return locks.is_free(self._repository_path(repository), _LOCK_MODES[mode])

    def _read_tickets(self, tidy: bool = True, skip: Container[str] = ()) -> list[Ticket]:
        with os.scandir(self._tickets) as entries:
            tickets = [self._read(entry.path, tidy) for entry in entries if entry.name not in skip]
        return [ticket for ticket in tickets if ticket is not None]

    def _read(self, path: str | Path, tidy: bool = True) -> Ticket | None:
        """The ticket in `path`, or None; a torn file (its writer died) is removed when
        `tidy` (only under the lock: without it, the file may be being written)."""
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO never waits
        try:
            fd = os.open(path, flags)
        except OSError:  # gone, a link, or unreadable: not a ticket
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None  # a directory or a FIFO that someone put there is no ticket
            raw = os.read(fd, 65536)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            ticket = Ticket.from_json(raw)
            if ticket.job_id != Path(path).name:  # its id names the file that `_drop` removes
                raise ValueError("not a ticket: in another job's file")
            return ticket
        except (ValueError, TypeError, KeyError, RecursionError, OverflowError):  # int(Infinity)
            if tidy:
                Path(path).unlink(missing_ok=True)
            return None

    def _drop(self, ticket: Ticket) -> None:
        self._ticket_path(ticket).unlink(missing_ok=True)
        (self._cancelled / ticket.job_id).unlink(missing_ok=True)
        if ticket.state == "waiting":  # withdrawn: its waiter finds it gone
            self._wake_up(ticket)
            (self._wake / ticket.job_id).unlink(missing_ok=True)

    def _wake_up(self, ticket: Ticket) -> None:
        _poke(self._wake / ticket.job_id, _TURN)
        # A waiter of the previous version (a `henbackup backup` started before an upgrade)
        # sleeps on inotify: an IN_ATTRIB on its ticket. (It also wakes at every nudge.)
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._ticket_path(ticket))

    def _clear_nudge(self) -> None:
        if self.nudged():
            os.truncate(self._nudge, 0)

    def nudged(self) -> bool:
        """Whether a nudge came that no re-plan has answered yet."""
        return self._nudge.stat().st_size > 0

    def _next_sequence(self) -> int:
        path = self.directory / "sequence"
        try:
            last = int(path.read_bytes())
        except (FileNotFoundError, ValueError):
            last = 0
        write_atomically(path, str(last + 1).encode())
        return last + 1

    def _ticket_path(self, ticket: Ticket) -> Path:
        return self._tickets / ticket.job_id

    def _repository_path(self, repository: str) -> Path:
        name = quote(repository, safe="")
        if len(name) > 200:
            name = hashlib.sha256(repository.encode()).hexdigest()
        return self.directory / f"repository-{name}"


class Grant:
    """A job's turn: holds its slot and repository lock until `release()` (or process death).

    A context manager. Only the process that was granted holds it: its lock fds are
    close-on-exec, and a fork()ed child closes its copies at once (see `_forget_in_child`),
    so a child that outlives the job never pins the slot; but the child forked by
    `handed_to_child` takes it over.
    """

    def __init__(
        self, scheduler: Scheduler, ticket: Ticket, slot_fd: int | None, repository_fd: int
    ) -> None:
        self.ticket = ticket
        self._scheduler = scheduler
        self._fds = [fd for fd in (repository_fd, slot_fd) if fd is not None]
        self.released = False
        self._bequeathed = False  # kept by the child of the fork under way
        _forget_grants_in_children()
        _HELD.add(self)

    def release(self, wait: bool = True) -> None:
        """Give the slot and repository back and wake whoever's turn it is; idempotent.

        Without `wait` (a loop), never waits for the queue's lock: while another process
        holds it, the locks are closed and the ticket dropped at once, and a nudge makes
        the waiters re-plan.
        """
        if self.released:
            return
        self.released = True
        try:
            with self._scheduler._locked(wait):
                self._scheduler._release(self)
        except QueueBusy:
            self.close_locks()
            self._scheduler._drop(self.ticket)
            self._scheduler.nudge()
        finally:
            self.close_locks()

    def close_locks(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def handed_to_child(self, start: Callable[[], T]) -> T:
        """Run `start()`, which forks the process that takes this grant over; returns what
        it returns. This process then closes its copies of the locks (the child's copies
        hold them); the child calls `adopt()`. If `start` raises, the grant stays here."""
        self._bequeathed = True
        try:
            child = start()
        finally:
            self._bequeathed = False
        self.released = True
        self.close_locks()
        return child

    def adopt(self) -> bool:
        """In the child of `handed_to_child`: make the ticket this process's own (its pid:
        liveness, `henbackupctl cancel`'s SIGUSR1); returns whether the job was asked to
        cancel before that (the signal then went to the parent)."""
        scheduler = self._scheduler
        with locks.locked(scheduler._lock):
            if not scheduler._ticket_path(self.ticket).exists():
                return True  # dropped by someone who thought it dead: nothing to run it
            self.ticket = replace(
                self.ticket, pid=os.getpid(), start_time=start_time(os.getpid()) or 0
            )
            scheduler._rewrite(self.ticket)
            return (scheduler._cancelled / self.ticket.job_id).exists()

    def __enter__(self) -> Grant:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Waiter:
    """A ticket in the queue, waiting for its turn: blocking (`wait`) or from a loop (`poll`)."""

    def __init__(
        self, scheduler: Scheduler, ticket: Ticket, wake_fd: int, grant: Grant | None
    ) -> None:
        self.ticket = ticket
        self.grant = grant
        self.on_close: Callable[[], None] | None = None
        self._scheduler = scheduler
        self._wake_fd = wake_fd
        self._handed_over = False
        self._closed = False
        self._told = b""  # what the FIFO said that no poll has acted on yet
        self.busy = False  # the last poll found the queue's lock held by another process
        if grant is not None:
            self.close()

    def fileno(self) -> int:
        """The wake FIFO: readable when the queue may have changed for this ticket."""
        return self._wake_fd

    def poll(self, block: bool = False) -> Grant | None:
        """Take the turn if it has come; returns the Grant or None (never blocks for long).

        Never waits for the queue's lock unless `block` (a blocking wait): while another
        process holds it (maybe a stopped one), returns None with `busy` set, and the next
        poll tries again. Raises JobCancelled when the ticket was cancelled by another
        process.
        """
        self.busy = False
        if self.grant is not None or self._closed:
            return self.grant
        told = self._told + self._drain()
        mine = _TURN in told
        if not (mine or (told and self._scheduler.nudged())):
            self._told = b""
            return None
        self._told = _TURN if mine else _NUDGE
        try:
            with self._scheduler._locked(block):
                self._told = b""
                self._take_turn(mine)
        except QueueBusy:
            self.busy = True
            return None
        if self.grant is not None:
            self.close()
        return self.grant

    def _take_turn(self, mine: bool) -> None:
        """Under the lock: the grant if the turn has come, JobCancelled if the ticket is gone."""
        if not self._scheduler._ticket_path(self.ticket).exists():
            self.close()
            raise JobCancelled(f"job {self.ticket.job_id} was cancelled while queued")
        if mine or self._scheduler.nudged():  # another waiter may have answered the nudge
            self.grant = self._scheduler._dispatch(self.ticket)

    def wait(self, timeout: float | None = None) -> Grant:
        """Block until the job's turn; returns its Grant.

        Raises QueueTimeout after `timeout` seconds, JobCancelled if cancelled (also what
        the scheduler's safe point raises meanwhile); in every case the ticket leaves the
        queue.
        """
        try:
            grant = self.grant or self._sleep_until_granted(timeout)
        except BaseException:
            self.cancel()
            raise
        self._handed_over = True
        return grant

    def _sleep_until_granted(self, timeout: float | None) -> Grant:
        deadline = None if timeout is None else time.monotonic() + timeout
        safe_point = self._scheduler.safe_point
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        if safe_point.fd is not None:
            poller.register(safe_point.fd, select.POLLIN)
        while True:
            safe_point.check()  # a stop that came in the queue's code is acted on here
            if self._closed:
                raise JobCancelled(f"job {self.ticket.job_id} was cancelled while queued")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueTimeout(_timeout_message(timeout or 0.0))
            sleep = REPLAN_EVERY if remaining is None else min(remaining, REPLAN_EVERY)
            ready = poller.poll(sleep * 1000 + 1)
            if any(fd == safe_point.fd for fd, _ in ready):
                safe_point.drain()  # then checked at the top
                continue
            if not ready:  # no word for long: re-plan, as if told (see Scheduler.replan)
                self._told += _TURN
            grant = self.poll(block=True)
            if grant is not None:
                return grant

    def hand_over(self, on_granted: Callable[[Grant], None]) -> None:
        """Give the grant to `on_granted`, once, unless the ticket was cancelled meanwhile."""
        if self.grant is not None and not self._handed_over and not self.grant.released:
            self._handed_over = True
            on_granted(self.grant)

    def cancel(self, loop: Loop | None = None) -> None:
        """Leave the queue; a grant not yet handed over is released. Idempotent. With
        `loop`, a waiting ticket never waits for the queue's lock: while another process
        holds it, the ticket is withdrawn from a timer (`Scheduler.forget_own`)."""
        if self.grant is not None:
            if not self._handed_over:
                self.grant.release(wait=loop is None)
            return
        if self._closed:
            return
        try:
            with self._scheduler._locked(wait=loop is None):
                self._scheduler._withdraw(self.ticket)
        except QueueBusy:
            assert loop is not None
            self._scheduler.forget_own(self.ticket.job_id, loop)
        finally:
            self.close()

    def position(self) -> int | None:
        """1 when this job runs next; None once running or gone."""
        return self._scheduler.position(self.ticket.job_id)

    def _drain(self) -> bytes:
        told = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._wake_fd, 512):
                told += chunk
        return told

    def close(self) -> None:
        """Stop waiting (the ticket itself stays as it is)."""
        if self._closed:
            return
        self._closed = True
        if self.on_close is not None:
            self.on_close()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            with contextlib.suppress(OSError):
                (self._scheduler._wake / self.ticket.job_id).unlink()


_HELD: weakref.WeakSet[Grant] = weakref.WeakSet()


def _forget_in_child() -> None:
    """After fork(), in the child: the parent's grants are not ours; close our copies only."""
    for grant in list(_HELD):
        if grant._bequeathed:  # the child of `handed_to_child`: ours now
            grant._bequeathed = False
            continue
        grant.released = True
        grant.close_locks()


@functools.cache
def _forget_grants_in_children() -> None:
    """From the first grant of this process on (not from the import: a handler runs in every
    forked child, the master's workers too, writing into pages they shared)."""
    os.register_at_fork(after_in_child=_forget_in_child)


def _poke(path: str | Path, told: bytes) -> None:
    """Write `told` into the wake FIFO at `path`, never waiting: nothing there, no reader,
    a full pipe (a wake-up is pending anyway) or a file that is no FIFO are left alone."""
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, told)
    except OSError:
        pass
    finally:
        os.close(fd)


def _in_queue_order(living: Iterable[Ticket]) -> tuple[Ticket, ...]:
    """Running tickets in arrival order, then waiting ones in the order they will run."""
    tickets = list(living)
    running = sorted((t for t in tickets if t.state == "running"), key=lambda t: t.sequence)
    return (*running, *in_order(tickets))


def _alive(ticket: Ticket) -> bool:
    return alive(ticket.pid, ticket.start_time)


def _timeout_message(timeout: float) -> str:
    return (
        f"gave up after {timeout:g}s in the queue (other jobs held every slot or the"
        " repository): raise max_concurrent_jobs or the job's timeout"
    )
