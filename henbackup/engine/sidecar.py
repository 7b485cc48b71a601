"""A helper program run beside an engine's tool, its lines read in the tool's own loop.

borg's backup has a scan beside it (borg.py): what it prints on stderr is passed line by
line to a handler as the tool's loop (run.py) finds it ready, at most PUMP_BYTES per turn,
so that neither starves the other. It holds no lock and nothing depends on it: it cannot
start, fails, is slow or prints a line over MAX_LINE_BYTES, and the tool's run goes on
without what it would have said. It is killed (its process group) when its caller is done
with it, and dies with us.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from henbackup.process import spawn

PUMP_BYTES = 256 * 1024  # read per turn of the loop, at most
MAX_LINE_BYTES = 16 * 1024 * 1024  # a longer line is not held (restic's snapshot lists fit)
REAP_WAIT = 5.0  # after SIGKILL (one blocked in the kernel may not die: not our wait)


class Sidecar:
    """One running helper: `fd` is readable when it said something or ended."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        on_line: Callable[[str], None],
        on_end: Callable[[int], None],
    ) -> None:
        """Start it; raises OSError if it cannot start. `on_end` gets its exit code once
        it closed its stderr and exited (negative: killed by that signal)."""
        import subprocess  # in the job process only: see henbackup.process

        self.on_line, self.on_end = on_line, on_end
        process, mask = spawn(
            argv,
            signal.SIGKILL,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
        assert process.stderr is not None
        self.process, self.stream = process, process.stderr
        self.fd = self.stream.fileno()
        os.set_blocking(self.fd, False)
        self.ended = False
        self._partial = b""
        try:  # a handler that ran as they were blocked may raise: it must not outlive us
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        except BaseException:
            self.stop()
            raise

    def pump(self) -> None:
        """Hand on the whole lines it printed so far (up to PUMP_BYTES); at the end of its
        output, its last line and its exit code."""
        chunks, size = [self._partial], 0
        while size < PUMP_BYTES and not self.ended:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.ended = True
            chunks.append(chunk)
            size += len(chunk)
        *lines, self._partial = b"".join(chunks).split(b"\n")
        if len(self._partial) > MAX_LINE_BYTES:  # what it would say is lost: as if it failed
            self.stop()
            return
        if self.ended and self._partial:
            lines.append(self._partial)
        for line in lines:
            self.on_line(line.decode(errors="replace"))
        if self.ended:
            self.stream.close()
            self.on_end(self._reap())

    def wait(self, seconds: float) -> None:
        """Read it until it ends or `seconds` pass."""
        deadline = time.monotonic() + seconds
        while not self.ended and (left := deadline - time.monotonic()) > 0:
            select.select([self.fd], [], [], left)
            self.pump()

    def stop(self) -> None:
        """Kill it (and what it started) if it still runs, and reap it."""
        if self.ended:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.ended = True
        self.stream.close()
        self._reap()

    def _reap(self) -> int:
        import subprocess

        try:
            return self.process.wait(REAP_WAIT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return -signal.SIGKILL
