"""The few inotify calls the queue needs, through ctypes: one fd, a watch per file."""

from __future__ import annotations

import ctypes
import errno
import os
import struct

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004  # utime() on the file, or its last link removed
IN_DELETE_SELF = 0x00000400

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    """A non-blocking, close-on-exec inotify fd, for select() or a Loop."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _os_error()
        self.fd: int = fd

    def watch(self, path: str, mask: int) -> int:
        """Watch `path` for the events of `mask`; returns the watch descriptor or raises OSError."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise _os_error(path)
        return int(wd)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> set[int]:
        """The watch descriptors that had events since the last read (empty if none)."""
        wds: set[int] = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return wds
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                wds.add(wd)
                offset += _EVENT.size + length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _os_error(path: str | None = None) -> OSError:
    code = ctypes.get_errno() or errno.EIO
    return OSError(code, os.strerror(code), path)
