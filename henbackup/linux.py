"""Every libc call henbackup makes, in one room: typed wrappers that raise OSError with errno.

The standard library lacks these few Linux calls: prctl (the process name, death signal and
subreaper), madvise (memory the kernel may merge), inotify (watching the backed-up trees and
the queue's ticket files), statfs (the file system type), timerfd (a wall-clock alarm) and
ioprio_set (ionice, which has no libc wrapper). Nothing else in henbackup imports ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = (ctypes.c_int,)
_libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
_libc.inotify_rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
_libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.timerfd_settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _checked(result: int, call: str, path: bytes | str | None = None) -> int:
    """`result`, or the OSError of errno when the call failed (returned < 0)."""
    if result >= 0:
        return result
    code = ctypes.get_errno() or errno.EIO
    raise OSError(code, f"{call}: {os.strerror(code)}", path)


# prctl(2)
PR_SET_PDEATHSIG, PR_SET_NAME, PR_SET_CHILD_SUBREAPER = 1, 15, 36


def set_comm(name: str) -> None:
    """Set /proc/self/comm (what `ps -e` and `top` show); the kernel keeps 15 bytes."""
    short = name.encode()[:15].decode(errors="ignore").encode()  # whole characters only
    _checked(_libc.prctl(PR_SET_NAME, short, 0, 0, 0), "prctl(PR_SET_NAME)")


def set_death_signal(signum: int) -> None:
    """Get `signum` when the parent thread dies (PR_SET_PDEATHSIG)."""
    _checked(_libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def set_child_subreaper() -> None:
    """Adopt our orphaned descendants (PR_SET_CHILD_SUBREAPER; not inherited by children)."""
    _checked(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


# madvise(2)
MADV_MERGEABLE = 12


def madvise(start: int, length: int, advice: int) -> None:
    _checked(_libc.madvise(start, length, advice), "madvise")


# inotify(7)
IN_MODIFY, IN_ATTRIB = 0x2, 0x4
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x2000, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK = 0x1000000, 0x2000000, 0x4000000
IN_MASK_ADD, IN_ISDIR = 0x20000000, 0x40000000
INOTIFY_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


class Inotify:
    """A non-blocking, close-on-exec inotify fd, for a selector loop.

    Raises OSError when the kernel refuses one (EMFILE: fs.inotify.max_user_instances).
    """

    def __init__(self) -> None:
        self.fd: int = _checked(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: bytes | str, mask: int) -> int:
        """Watch `path` for the events of `mask`; returns the watch descriptor.

        Raises OSError (ENOSPC: out of fs.inotify.max_user_watches)."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        return _checked(wd, "inotify_add_watch", path)

    def rm_watch(self, wd: int) -> None:
        """Drop watch `wd`; one the kernel already dropped (EINVAL) is no error."""
        if _libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            _checked(-1, "inotify_rm_watch")

    def read(self, size: int = 65536) -> bytes:
        """The events queued so far, up to `size` bytes; b"" when there are none."""
        try:
            return os.read(self.fd, size)
        except (BlockingIOError, InterruptedError):
            return b""

    def drain(self) -> set[int]:
        """The watch descriptors that had events since the last read (empty if none)."""
        wds: set[int] = set()
        while data := self.read():
            wds.update(wd for wd, _mask, _name in inotify_events(data))
        return wds

    def close(self) -> None:
        """Release the fd and every watch on it (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def inotify_events(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The (wd, mask, name) of each event in one read's `data`; name is b"" for none."""
    offset, end = 0, len(data)
    while offset < end:
        wd, mask, _cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
        offset += INOTIFY_EVENT.size
        yield wd, mask, data[offset : offset + length].rstrip(b"\0")
        offset += length


# statfs(2)
def statfs_type(path: bytes) -> int:
    """The f_type of the file system holding `path` (0xEF53 for ext2-4...); raises OSError."""
    buffer = ctypes.create_string_buffer(256)  # struct statfs (120 bytes); f_type comes first
    _checked(_libc.statfs(path, buffer), "statfs", path)
    return ctypes.c_long.from_buffer(buffer).value


# timerfd_create(2)
CLOCK_REALTIME = 0
TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET = 1, 2


def timerfd_create(clock: int) -> int:
    """A non-blocking, close-on-exec timerfd on `clock`; raises OSError."""
    fd = _libc.timerfd_create(clock, os.O_NONBLOCK | os.O_CLOEXEC)
    return _checked(fd, "timerfd_create")


# The largest time a C long holds: past 2038 on a 32-bit machine (its time_t). The timer
# then wakes early, and its owner, finding nothing due, arms it again.
_LONG_MAX = 2 ** (8 * struct.calcsize("l") - 1) - 1


def timerfd_settime(fd: int, flags: int, value: float) -> None:
    """Arm timerfd `fd` once at `value` seconds (0 disarms it); raises OSError."""
    value = min(value, _LONG_MAX)
    whole = int(value)
    spec = struct.pack("4l", 0, 0, whole, int((value - whole) * 1e9))  # itimerspec: no interval
    _checked(_libc.timerfd_settime(fd, flags, spec, None), "timerfd_settime")


# ioprio_set(2): no libc wrapper, so the raw syscall, whose number depends on the machine
IOPRIO_WHO_PROCESS = 1
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "armv7l": 314, "armv6l": 314, "i686": 289}


def _machine() -> str:
    """platform.machine() on Linux, without importing platform (its regexes) on every start."""
    return os.uname().machine


def ioprio_supported() -> bool:
    return _machine() in _IOPRIO_SET


def ioprio_set(value: int) -> None:
    """ioprio_set(IOPRIO_WHO_PROCESS, self, value); raises OSError."""
    number = _IOPRIO_SET.get(_machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"ioprio_set is unknown on {_machine()}")
    if _libc.syscall(number, IOPRIO_WHO_PROCESS, 0, value) != 0:
        _checked(-1, "ioprio_set")
