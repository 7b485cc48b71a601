"""Files that must be whole: written so that a crash leaves the old content or the new;
and small records read back without trusting what is at their path."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` so that a crash leaves the old content or the new, whole, with
    `mode` from the start (readers never see a file they may not read). For a directory of
    root's own; `write_in` for one found by `open_directory`. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    directory = os.open(path.parent, DIRECTORY_FLAGS)
    try:
        write_in(directory, path.name, data, mode)
    finally:
        os.close(directory)


def write_in(directory: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """`write_atomically` into the open `directory`, whatever its path leads to meanwhile.

    Raises OSError (the temporary file is removed). The temporary file is hidden and ends in
    .tmp, so that directory scanners (node_exporter's `*.prom`) never pick it up.
    """
    # Not tempfile.mkstemp: tempfile imports random, whose handler would run in every
    # forked worker (henbackup.process).
    temporary = f".{name}.{os.urandom(6).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600, dir_fd=directory)
    try:
        try:
            os.fchmod(fd, mode)
            stream = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)  # the stream would have closed it
            raise
        with stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=directory)
        raise
    os.fsync(directory)  # the rename itself is durable only once the directory is


def open_directory(path: Path, mode: int) -> int:
    """An open descriptor of the absolute directory `path`, what is missing of it made with
    `mode` whatever the umask, for root to write in a place other users may own (the
    metrics textfile's). Raises OSError.

    It is reached part by part without following a symbolic link that another user could
    have placed (one in a directory they own or may write to): else, swapping a part for a
    link meanwhile, they could have root make, chmod or write a file anywhere. A link of
    root's is followed, its target walked by the same rule."""
    parts = deque(path.parts[1:])
    fd, links = os.open("/", DIRECTORY_FLAGS), 0
    try:
        while parts:
            child = _enter(fd, parts.popleft(), mode)
            if isinstance(child, str):  # a link of root's: its target's parts come next
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
                target = Path(child)
                if target.is_absolute():
                    os.close(fd)
                    fd = os.open("/", DIRECTORY_FLAGS)
                parts.extendleft(reversed(target.relative_to(target.anchor).parts))
                continue
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
MAX_LINKS = 40  # as the kernel's own resolution allows


def _enter(parent: int, name: str, mode: int) -> int | str:
    """The directory `name` in `parent` (made if missing), or the target of a link there
    that only root could have made."""
    try:
        return os.open(name, DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except FileNotFoundError:
        os.mkdir(name, mode, dir_fd=parent)  # FileExistsError: made meanwhile, by whom?
        child = os.open(name, DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        try:
            os.fchmod(child, mode)
        except BaseException:
            os.close(child)
            raise
        return child
    except NotADirectoryError:  # what O_NOFOLLOW says of a link too
        if not stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise
    held = os.fstat(parent)
    if held.st_uid != 0 or held.st_mode & 0o022:
        raise OSError(errno.ELOOP, f"{name} is a link another user may have made")
    return os.readlink(name, dir_fd=parent)


def read_record(path: Path, limit: int = 1 << 16) -> bytes:
    """The bytes of the small regular file at `path`: raises FileNotFoundError, or OSError
    for a link, a FIFO (it would block), a device (/dev/zero never ends) or more than
    `limit` bytes."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data
