"""nice and ionice of the calling process (a program's child, before it execs).

Both are per thread in Linux and inherited by every thread and child created afterwards:
set before exec, they hold for the whole of restic. ioprio_set has no libc wrapper.
"""

from __future__ import annotations

import ctypes
import os
import platform

IOPRIO_WHO_PROCESS = 1
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "armv7l": 314, "armv6l": 314, "i686": 289}
_libc = ctypes.CDLL(None, use_errno=True)


def set_nice(value: int) -> None:
    """Raises OSError (EACCES: a negative value needs CAP_SYS_NICE)."""
    os.setpriority(os.PRIO_PROCESS, 0, value)


def set_ioprio(value: int) -> None:
    """ioprio_set(IOPRIO_WHO_PROCESS, self, value); raises OSError."""
    number = _IOPRIO_SET.get(platform.machine())
    if number is None:
        raise OSError(0, f"ioprio_set is unknown on {platform.machine()}")
    if _libc.syscall(number, IOPRIO_WHO_PROCESS, 0, value) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def ioprio_supported() -> bool:
    return platform.machine() in _IOPRIO_SET
