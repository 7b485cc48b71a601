"""Forking supervised children: the master's workers, and a worker's job processes.

Children are forked, not exec'd: with `gc.freeze()` before the fork, a child shares almost
all of its parent's memory. Each child gets its own process group, a recognisable name in
/proc/PID/comm, and dies with its parent (PR_SET_PDEATHSIG). The parent watches it through
a pidfd, which becomes readable when the child exits.

The master is also a child subreaper: a process orphaned below it (a restic whose job
process was killed) becomes its child, not init's, and it reaps those (`reap_orphans`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import traceback
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass

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
