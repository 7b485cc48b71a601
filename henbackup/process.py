"""Forking supervised children: the master's workers, and a worker's job processes.

Children are forked, not exec'd: with `gc.freeze()` before the fork, a child shares almost
all of its parent's memory. Each child gets its own process group, a recognisable name in
/proc/PID/comm, and dies with its parent (PR_SET_PDEATHSIG). The parent watches it through
a pidfd, which becomes readable when the child exits.

Programs (restic, command hooks) are spawned by `spawn`: signals blocked across the fork,
the program dies with us, and a signal meant for us never runs our Python handlers in it.
A job process's handlers only record; it acts on them at its `SafePoint`s.

The master is also a child subreaper: a process orphaned below it (a restic whose job
process was killed) becomes its child, not init's, and it reaps those (`reap_orphans`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PR_SET_NAME, PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 15, 1, 36
EXIT_CRASHED = 70  # EX_SOFTWARE: an unexpected exception in the child

_libc = ctypes.CDLL(None, use_errno=True)


def set_comm(name: str) -> None:
    """Set /proc/self/comm (what `ps -e` and `top` show); the kernel keeps 15 bytes."""
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Get `signum` when the parent dies; exit at once if it already died before we asked."""
    _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
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
    _libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
    if os.getppid() != parent_pid:  # we died before prctl took effect
        os._exit(1)
    if _program_setup is not None:
        _program_setup()
    reset_signals(mask)


def spawn(
    argv: Sequence[str], death_signal: int, **popen: Any
) -> tuple[subprocess.Popen[bytes], set[signal.Signals]]:
    """Start a program that may be cancelled: returns it and the signal mask to restore.

    Every signal stays blocked from before the fork: the caller restores the mask once the
    program is under watch (a stop is then acted on there). The program gets
    `death_signal` when we die, default signal actions and our mask. `popen` goes to
    Popen; an OSError from it is raised with the mask restored.
    """
    mask = block_signals()
    setup = functools.partial(_before_exec, os.getpid(), mask, death_signal)
    try:
        return subprocess.Popen(list(argv), preexec_fn=setup, **popen), mask
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise


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


def fork_child(comm: str, body: Callable[[], int], close_in_child: Iterable[int] = ()) -> Forked:
    """Fork a child that runs `body()` and exits with its return value.

    In the child: a new process group, `comm` as its name, death with the parent, and the
    parent's descriptors in `close_in_child` closed. An exception escaping `body` is printed
    and exits EXIT_CRASHED; nothing ever returns into the parent's code.
    """
    parent_pid = os.getpid()
    gc.freeze()  # keep the parent's objects out of the child's collections: pages stay shared
    pid = os.fork()
    if pid == 0:
        _child(parent_pid, comm, body, close_in_child)
    gc.unfreeze()
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


def become_subreaper() -> None:
    """Adopt our orphaned descendants (PR_SET_CHILD_SUBREAPER; not inherited by children).

    So that an orphaned restic is reaped by us when it ends, instead of lingering as a
    zombie under an init that may not reap: restic counts a lock whose pid exists as live.
    """
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


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


def describe_status(status: int) -> str:
    """`exited with 1` or `killed by SIGKILL`: how a child ended, for events."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.WEXITSTATUS(status)}"
