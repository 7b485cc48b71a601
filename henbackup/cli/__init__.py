"""The command-line programs: `henbackup` (daemon.py) and `henbackupctl` (ctl.py)."""

from __future__ import annotations

import os
import sys
from typing import NoReturn, TextIO


def exit_now(code: int) -> NoReturn:
    """Exit with `code` once stdout and stderr are flushed, skipping the interpreter's
    teardown: freeing every module's objects one by one costs 10 to 20 ms at the end of each
    command (a quarter of henbackupctl's own time), and no file of ours waits for it: each
    is closed by its `with`. A flush that fails exits 120, as Python's own exit does."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left, or the stream was closed
            code = code or 120
    os._exit(code)


def reader_left(stream: TextIO) -> None:
    """The reader of `stream` (stdout) left, as in `henbackupctl status | head -1`: like any
    Unix tool, no traceback. The stream goes to /dev/null, so that what is still printed,
    and the flush at exit, go nowhere instead of failing again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
