"""Forking supervised children: the master's workers, and a worker's job processes.

Children are forked, not exec'd: with `gc.freeze()` before the fork (never undone), a child
shares almost all of its parent's memory. Each child gets its own process group, a
recognisable name in /proc/PID/comm, and dies with its parent (PR_SET_PDEATHSIG). The
parent watches it through a pidfd, which becomes readable when the child exits.
`start_watched` forks one that talks to its parent on a channel, and watches both from the
parent's loop.

Programs (restic, command hooks) are spawned by `spawn`: signals blocked across the fork,
the program dies with us, and a signal meant for us never runs our Python handlers in it.
A job process's handlers only record; it acts on them at its `SafePoint`s.

Neither the master nor a worker imports a module that registers a handler to run in every
forked child (threading, random, logging): in a worker it would write, right after the fork,
into some 0.5 MiB of pages it shared. `subprocess` imports threading, so it is imported
where a program is spawned: in a job process, after its fork.

The master is also a child subreaper: a process orphaned below it (a restic whose job
process was killed) becomes its child, not init's, and it reaps those (`reap_orphans`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import subprocess

    from henbackup.channel import Channel, ChannelMessage, Malformed
    from henbackup.loop import Loop

from henbackup import linux
from henbackup.errors import JobCancelled
from henbackup.linux import set_comm

EXIT_CRASHED = 70  # EX_SOFTWARE: an unexpected exception in the child


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Get `signum` when the parent dies; exit at once if it already died before we asked."""
    linux.set_death_signal(signum)
    if os.getppid() != parent_pid:
        os._exit(1)


def block_signals() -> set[signal.Signals]:
    """Block every signal; returns the mask to restore.

    Around a fork: signals wait until the child is under watch (a stop in between would
    leave it running unknown) and cannot run our handlers in the child.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    except BaseException:  # a handler that ran as they were blocked raised
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    return mask


def reset_signals(mask: set[signal.Signals]) -> None:
    """In a child forked with every signal blocked: our Python handlers (and the wakeup fd)
    go, so that a signal meant for the parent cannot run them here; then `mask` is back."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


_program_setup: Callable[[], None] | None = None


def set_program_setup(setup: Callable[[], None] | None) -> None:
    """Run `setup` in the child of every program `spawn` starts from now on, before it
    execs (limits/: the job's cgroup, nice and ionice); None: no more."""
    global _program_setup
    _program_setup = setup


def _before_exec(parent_pid: int, mask: set[signal.Signals], death_signal: int) -> None:
    """preexec_fn, run with every signal blocked (see `spawn`)."""
    linux.set_death_signal(death_signal)
    if os.getppid() != parent_pid:  # we died before prctl took effect
        os._exit(1)
    if _program_setup is not None:
        _program_setup()
    reset_signals(mask)
    # The signal that ends it is never ignored, even if we inherited it ignored (a shell's
    # background job ignores SIGINT): a Python program such as borg would keep that.
    if death_signal not in (0, signal.SIGKILL, signal.SIGSTOP):
        signal.signal(death_signal, signal.SIG_DFL)


def spawn(
    argv: Sequence[str], death_signal: int, **popen: Any
) -> tuple[subprocess.Popen[bytes], set[signal.Signals]]:
    """Start a program that may be cancelled: returns it and the signal mask to restore.

    Every signal stays blocked from before the fork: the caller restores the mask once the
    program is under watch (a stop is then acted on there). The program gets
    `death_signal` when we die, default signal actions and our mask. `popen` goes to
    Popen; an OSError from it is raised with the mask restored.
    """
    import subprocess  # not before: see the module's docstring

    mask = block_signals()
    setup = functools.partial(_before_exec, os.getpid(), mask, death_signal)
    try:
        return subprocess.Popen(list(argv), preexec_fn=setup, **popen), mask
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise


def stop_program(
    process: subprocess.Popen[bytes],
    signals: Sequence[int],
    grace: float,
    wait_until: Callable[[float], object],
    group: bool = False,
    reap_within: float | None = None,
) -> None:
    """End a spawned program: `signals`, then `grace` seconds for it to act on them, then
    SIGKILL; reaped.

    `wait_until(deadline)` returns when the program exits or at `deadline` (it may read the
    program's output meanwhile, so that it never blocks writing); a stop or Ctrl-C that
    comes during it changes nothing, as this is already stopping. With `group`, the
    signals and the SIGKILL go to its whole process group (stragglers too). With
    `reap_within`, the reap gives up after that many seconds: a program blocked in the
    kernel (a hung NFS read) may not die, and must not hang us too.
    """

    import subprocess

    def send(signum: int) -> None:
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)
        elif signum != signal.SIGKILL or process.poll() is None:
            process.send_signal(signum)

    deadline = time.monotonic() + grace
    try:
        for signum in signals:
            send(signum)
        while True:
            try:
                wait_until(deadline)
                break
            except subprocess.TimeoutExpired:
                break
            except (JobCancelled, KeyboardInterrupt):
                continue  # already stopping it
    finally:
        send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(reap_within)


@dataclass(frozen=True)
class SafePoint:
    """Where a process acts on the signals its handlers only recorded.

    `check()` raises what they ask for: call it where nothing is half done (no lock held,
    no file half-written). `fd`, when there is one, becomes readable as a signal comes:
    a wait selects on it beside its own fds, then calls `woken()`.
    """

    check: Callable[[], None] = lambda: None
    fd: int | None = None

    def woken(self) -> None:
        """Empty the wakeup fd, then act on what came."""
        self.drain()
        self.check()

    def drain(self) -> None:
        """Empty the wakeup fd (what came stays recorded for the next `check()`)."""
        if self.fd is not None:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 512):
                    pass


NEVER = SafePoint()  # for a process that acts on no signal: nothing to check, no wakeup


@dataclass(frozen=True)
class Forked:
    pid: int
    pidfd: int  # readable once the child has exited; reap with os.waitpid(pid, 0)


NOT_MERGED = (b"[stack]", b"[vvar]")  # changing all the time; the kernel's own


def freeze_for_fork() -> None:
    """Collect what is garbage now, then freeze what is left, for good; and offer what the
    child will share to the kernel's same-page merging (`offer_to_merge`).

    A garbage collection writes into every object it looks at: a page the parent shared
    with its children would become a private copy in each of them. Frozen objects are never
    looked at again, in the parent or in a child. They stay frozen in the parent too: once
    unfrozen, its next full collection would write into all of them (a megabytes-large
    private copy in every worker). What is frozen and later becomes cyclic garbage is not
    freed (objects without cycles are, as always); the collection before freezing keeps
    that to what lives at a fork.
    """
    gc.collect()
    gc.freeze()
    offer_to_merge()


def offer_to_merge() -> None:
    """Let the kernel's same-page merging (KSM) share again what a child copied but left as
    it was: every private writable mapping there is now, inherited by the children forked
    next (not by a program they exec, which gets mappings of its own).

    A child copies each page it writes in, and most end byte for byte the parent's (a count
    raised, then lowered again). Measured at 20 idle backups: 3.0 MiB of each worker's own
    memory, 0.8 MiB once merged. Nothing is merged until the owner turns merging on
    (/sys/kernel/mm/ksm/run, henbackup(8)); a mapping the kernel does not take is skipped.
    """
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            address, perms, *rest = line.split()
            name = rest[3] if len(rest) > 3 else b""
            if perms.startswith(b"rw") and perms.endswith(b"p") and name not in NOT_MERGED:
                start, end = (int(bound, 16) for bound in address.split(b"-"))
                with contextlib.suppress(OSError):
                    linux.madvise(start, end - start, linux.MADV_MERGEABLE)


def fork_child(comm: str, body: Callable[[], int], close_in_child: Iterable[int] = ()) -> Forked:
    """Fork a child that runs `body()` and exits with its return value.

    In the child: a new process group, `comm` as its name, death with the parent, and the
    parent's descriptors in `close_in_child` closed. An exception escaping `body` is printed
    and exits EXIT_CRASHED; nothing ever returns into the parent's code.
    """
    freeze_for_fork()
    return _fork(os.getpid(), comm, body, close_in_child)


def _fork(parent_pid: int, comm: str, body: Callable[[], int], close: Iterable[int]) -> Forked:
    mask = block_signals()  # see start_watched_many
    try:
        pid = os.fork()
        if pid == 0:
            reset_signals(mask)
            _child(parent_pid, comm, body, close)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return Forked(pid, os.pidfd_open(pid))


def _child(
    parent_pid: int, comm: str, body: Callable[[], int], close_in_child: Iterable[int]
) -> None:
    code = EXIT_CRASHED
    try:
        os.setpgid(0, 0)
        die_with_parent(parent_pid)
        set_comm(comm)
        for fd in close_in_child:
            os.close(fd)
        code = body()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else EXIT_CRASHED
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def reap(forked: Forked) -> int:
    """Collect the exited child; returns its wait status (see os.waitstatus_to_exitcode)."""
    os.close(forked.pidfd)
    _, status = os.waitpid(forked.pid, 0)
    return status


@dataclass
class Watched:
    """A child forked by `start_watched`, under watch in its parent's loop."""

    loop: Loop
    forked: Forked
    channel: Channel | None  # the parent's end; None once the child closed its own
    heard: Callable[[list[ChannelMessage]], None]
    exited: Callable[[int], None]
    malformed: Malformed
    _room: int | None = None  # see _watch_room

    @property
    def pid(self) -> int:
        return self.forked.pid

    def send(self, message: ChannelMessage) -> bool:
        """Tell the child, never waiting for it to read (what it has not taken yet goes when
        it can); returns False when it can no longer hear, or has long stopped reading."""
        if self.channel is None or not self.channel.send_without_waiting(message):
            return False
        self._watch_room()
        return True

    def _flush(self) -> None:
        if self.channel is not None:
            self.channel.flush()  # a child gone: its pidfd reports the exit
        self._watch_room()

    def _watch_room(self) -> None:
        """While bytes wait for the child to read, wait for room in the socket, on a
        duplicate of the channel's descriptor (the loop watches that one for reading)."""
        waiting = self.channel is not None and bool(self.channel.unsent)
        if waiting and self._room is None:
            assert self.channel is not None
            self._room = os.dup(self.channel.fileno())
            self.loop.add_writer(self._room, self._flush)
        elif not waiting and self._room is not None:
            self.loop.remove_reader(self._room)
            os.close(self._room)
            self._room = None

    def _readable(self) -> None:
        assert self.channel is not None
        try:
            messages = self.channel.receive(self.malformed)
        except (OSError, ValueError):  # a broken socket, or a line too long: no more to trust
            messages = None
        if messages is None:  # closed: the pidfd reports the exit
            self._close_channel()
        else:
            self.heard(messages)

    def _ended(self) -> None:
        self.loop.remove_reader(self.forked.pidfd)
        try:
            if self.channel is not None:  # what it said last (its end, its result) is not lost
                messages = self.channel.drain(self.malformed)
                self._close_channel()
                self.heard(messages)
        finally:  # even if hearing them failed: no child is left unreaped
            self.exited(reap(self.forked))

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.loop.remove_reader(self.channel.fileno())
            self.channel.close()
            self.channel = None
            self._watch_room()


class WatchedPlan(NamedTuple):
    """A child for `start_watched_many` to fork: its name, what it runs, and what its
    parent does with what it says, with a line of the wrong shape, and with its exit."""

    comm: str
    body: Callable[[Channel], int]
    heard: Callable[[list[ChannelMessage]], None]
    exited: Callable[[int], None]
    malformed: Malformed


def start_watched(
    loop: Loop,
    comm: str,
    body: Callable[[Channel], int],
    heard: Callable[[list[ChannelMessage]], None],
    exited: Callable[[int], None],
    malformed: Malformed,
) -> Watched:
    """Fork a child (see `fork_child`) that runs `body(its end of a new channel)`.

    The child closes every descriptor of `loop` (they are the parent's: `Loop.abandon`).
    The parent's loop passes each batch of the child's messages to `heard` (also an empty
    one: the child is alive), each line of the wrong shape to `malformed`, and at the
    child's exit what it still said to `heard`, then its wait status to `exited` once it is
    reaped.
    """
    return start_watched_many(loop, [WatchedPlan(comm, body, heard, exited, malformed)])[0]


def start_watched_many(loop: Loop, plans: Sequence[WatchedPlan]) -> list[Watched]:
    """`start_watched` for each plan, the forks one right after the other.

    A page the parent writes after a fork stops being shared with that child: it becomes a
    private copy in the child. So everything the children need (their channels) is made
    before the first fork, the watching is set up after the last, and in between the parent
    only forks and keeps each pid. Measured at 20 idle workers: 2.7 MiB of each one's own
    memory, 2.75 when each fork came after making its channel, 3.3 when each came between
    the master's other work. Forking stops at the first fork that fails: the children forked
    before it are watched and returned (the error is raised if there are none). A child whose
    pidfd cannot be opened is killed and reaped, as are those forked after it.
    """
    from henbackup.channel import Channel  # only forking processes talk: not `henbackup backup`

    parent_pid = os.getpid()
    pairs = [Channel.pair() for _ in plans]
    every_end = [end.fileno() for pair in pairs for end in pair]
    children = [
        (plan.comm, functools.partial(_watched_child, loop, plan.body, child_end, every_end))
        for plan, (_, child_end) in zip(plans, pairs, strict=True)
    ]
    freeze_for_fork()
    pids: list[int] = []
    # Until a child has dropped the parent's handlers and signal wake-up, a signal sent to
    # it (a reload stopping a worker just forked) would be written to the parent's wake-up
    # pipe: the parent would take a worker's SIGTERM for its own.
    mask = block_signals()
    try:
        for comm, body in children:
            pid = os.fork()
            if pid == 0:
                reset_signals(mask)
                _child(parent_pid, comm, body, ())
            pids.append(pid)
    except OSError:
        if not pids:
            _close_pairs(pairs)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _close_pairs(pairs[len(pids) :])
    watched: list[Watched] = []
    for index, (plan, pid) in enumerate(zip(plans, pids, strict=False)):
        parent_end, child_end = pairs[index]
        child_end.close()  # the descriptor the pidfd takes
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # ENOMEM, ENFILE: no child may run unwatched, this one nor the later
            parent_end.close()
            _close_pairs(pairs[index + 1 : len(pids)])
            _kill_and_reap(pids[index:])
            if watched:
                break
            raise
        forked = Forked(pid, pidfd)
        child = Watched(loop, forked, parent_end, plan.heard, plan.exited, plan.malformed)
        loop.add_reader(forked.pidfd, child._ended)
        loop.add_reader(parent_end.fileno(), child._readable)
        watched.append(child)
    return watched


def _close_pairs(pairs: Iterable[tuple[Channel, Channel]]) -> None:
    for parent_end, child_end in pairs:
        parent_end.close()
        child_end.close()


def _kill_and_reap(pids: Iterable[int]) -> None:
    """Children just forked that cannot be watched (SIGKILL cannot be caught: each wait is
    short)."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _watched_child(
    loop: Loop, body: Callable[[Channel], int], channel: Channel, every_end: list[int]
) -> int:
    """In the child: close what is the parent's (its loop, and every channel of the burst but
    its own end), then run."""
    loop.abandon()
    for fd in every_end:
        if fd != channel.fileno():
            os.close(fd)
    return body(channel)


def become_subreaper() -> None:
    """Adopt our orphaned descendants (PR_SET_CHILD_SUBREAPER; not inherited by children).

    So that an orphaned restic is reaped by us when it ends, instead of lingering as a
    zombie under an init that may not reap: restic counts a lock whose pid exists as live.
    """
    linux.set_child_subreaper()


def reap_orphans(tracked: Container[int]) -> list[int]:
    """Reap the exited children that are not `tracked`; returns their pids.

    A tracked child is reaped by its owner with its status (see `reap`): each exit is only
    peeked at (WNOWAIT) first, and the first tracked one ends the round. Its owner reaps it
    at once; the next round (the next SIGCHLD, or a periodic call) goes on from there.
    """
    reaped: list[int] = []
    while True:
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # no child at all
            return reaped
        if exited is None or exited.si_pid == 0 or exited.si_pid in tracked:
            return reaped
        os.waitpid(exited.si_pid, 0)  # exited already: does not block
        reaped.append(exited.si_pid)


def signal_name(signum: int) -> str:
    """`SIGKILL`, or `signal 40` for one Python has no name for (the real-time ones)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(code: int) -> str:
    """`exited with 1` or `was killed by SIGKILL`: how a process ended, for events, from
    its exit code as os.waitstatus_to_exitcode gives it (negative: the signal)."""
    if code < 0:
        return f"was killed by {signal_name(-code)}"
    return f"exited with {code}"
