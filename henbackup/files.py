"""Files that must be whole: written so that a crash leaves the old content or the new;
and small records read back without trusting what is at their path."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` so that a crash leaves the old content or the new, whole, with
    `mode` from the start (readers never see a file they may not read).

    Raises OSError (the temporary file is removed). The temporary file is hidden and ends in
    .tmp, so that directory scanners (node_exporter's `*.prom`) never pick it up.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: tempfile imports random, whose handler would run in every
    # forked worker (henbackup.process).
    temporary = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
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
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)  # the rename itself is durable only once the directory is
    finally:
        os.close(directory)


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
