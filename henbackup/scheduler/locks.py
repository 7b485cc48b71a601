"""flock(2) helpers: kernel locks die with their holder, so a killed job leaves nothing held.

flock, not fcntl/POSIX record locks: flock locks belong to an open file description, so two
opens in one process exclude each other, and closing some other fd on the same file does not
silently drop a lock (POSIX locks have both of those traps).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SHARED = fcntl.LOCK_SH
EXCLUSIVE = fcntl.LOCK_EX


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def try_lock(path: Path, mode: int) -> int | None:
    """Take `mode` (SHARED or EXCLUSIVE) on `path` without blocking.

    Returns the fd that holds the lock (close it to release), or None when it is taken.
    """
    fd = _open(path)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def wait_lock(
    path: Path, mode: int, timeout: float, check: Callable[[], None] | None = None
) -> int | None:
    """Take `mode` on `path`, waiting at most `timeout` seconds; returns the fd that holds
    it, or None when it stayed taken.

    Polls rather than blocking in flock(2): the wait has a deadline without an alarm, and
    `check()`, called between polls, may raise to end it (a job's stop, its cancel).
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while (fd := try_lock(path, mode)) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(delay, left))
        delay = min(delay * 2, 1.0)
        if check is not None:
            check()
    return fd


def is_free(path: Path, mode: int) -> bool:
    """Whether `mode` could be taken on `path` right now (nothing stays held)."""
    fd = try_lock(path, mode)
    if fd is None:
        return False
    os.close(fd)
    return True


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block, waiting for it if needed.

    Opens the file anew each time: a lock fd inherited across fork() would be shared with the
    parent (same open file description), and the two would not exclude each other.
    """
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
