"""Stall watch: how long a running tool has made no progress (henbackup.toml(5), `stall_timeout`).

Progress is bytes moved: every byte the process read or wrote (/proc/PID/io rchar and wchar
count files, pipes and sockets alike), less its own output to us, which goes on while it is
stuck (restic prints a status line twice a second). The engine adds what it reads in the
tool's own words (a status line whose counters moved). Time counts only while this process
watches: if it was frozen too (a paused job's cgroup), that time is no stall of the tool;
nor while the master has paused the tool (preemption, limits/pause.py).

The same look at /proc serves the progress that counts what the tool sent
(`files_and_sockets`, and the engine's arithmetic in engine/transfer.py): /proc is read
once per look.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal

# A stall is reported (once) when it has lasted this long, or half the timeout if shorter.
STALL_WARNING = 60.0
# Less than this since the last progress is noise (the Go runtime, a stray status byte).
PROGRESS_BYTES = 4096
# Longer gaps between two looks than this mean that the watcher itself was stopped.
MAX_STEP = 5.0

Verdict = Literal["stalled", "expired"]

# /proc/PID/stat states of a process that cannot be making progress by itself.
_STUCK_STATES = {
    "T": "stopped (SIGSTOP or a debugger)",
    "t": "stopped (SIGSTOP or a debugger)",
    "D": "blocked in the kernel (a hung disk or network file system?)",
}


@dataclass(frozen=True)
class IoCounters:
    """Bytes a process has read and written so far, by any means (files, pipes, sockets)."""

    rchar: int
    wchar: int

    @property
    def moved(self) -> int:
        return self.rchar + self.wchar


@dataclass(frozen=True)
class OpenFile:
    """A file a process has open: its size now and where the process is in it."""

    size: int
    position: int
    inode: int = 0


def parse_io(text: str) -> IoCounters | None:
    """rchar and wchar of a /proc/PID/io text; None if either is missing."""
    counters = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("rchar", "wchar") and value.strip().isdigit():
            counters[name] = int(value)
    return IoCounters(**counters) if len(counters) == 2 else None


def read_io(pid: int) -> IoCounters | None:
    """What process `pid` has read and written so far; None if the kernel will not say."""
    try:
        with open(f"/proc/{pid}/io") as file:
            return parse_io(file.read())
    except OSError:
        return None


def open_files(pid: int, name_part: str) -> list[OpenFile] | None:
    """The files process `pid` has open whose path holds `name_part` (deleted ones too);
    None if the kernel will not say. A file closed meanwhile is left out."""
    found = files_and_sockets(pid, name_part)
    return None if found is None else found[0]


def files_and_sockets(pid: int, name_part: str) -> tuple[list[OpenFile], int] | None:
    """`open_files`, and how many sockets the process has open (one look at its fds)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    found, sockets = [], 0
    for fd in fds:
        with contextlib.suppress(OSError, ValueError, IndexError):
            path = os.readlink(f"/proc/{pid}/fd/{fd}")
            sockets += path.startswith("socket:")
            if name_part in path:
                status = os.stat(f"/proc/{pid}/fd/{fd}")
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    position = int(info.readline().split()[1])  # "pos:\t1234"
                found.append(OpenFile(status.st_size, position, status.st_ino))
    return found, sockets


def read_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, T...), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    _, _, rest = text.rpartition(") ")  # the name in parentheses may hold anything
    return rest[:1] or None


def idle_reason(state: str | None) -> str | None:
    """Why a process in `state` makes no progress ("stopped ..."), if its state says it."""
    return _STUCK_STATES.get(state or "")


@dataclass
class StallWatch:
    """The no-progress bookkeeping of one run; fed by `moved` and `look`."""

    timeout: float  # seconds without progress after which the run is ended
    last: float  # when time was last accounted (a monotonic clock)
    quiet: float = 0.0  # seconds without progress so far
    mark: int | None = None  # the byte count at the last progress
    reported: bool = False  # this stall was reported

    @property
    def warn_after(self) -> float:
        return min(STALL_WARNING, self.timeout / 2)

    def moved(self, now: float) -> None:
        """Progress seen another way (the tool's own counters moved)."""
        self.last, self.quiet, self.reported = now, 0.0, False

    def look(self, now: float, moved_bytes: int | None, paused: bool = False) -> Verdict | None:
        """Account the time since the last look, given the byte count now (None: unknown,
        which is never a stall) and whether the tool was paused on purpose (that time does
        not count). Returns "stalled" once per stall when it has lasted `warn_after`, then
        "expired" when it has lasted `timeout`, else None."""
        step = min(max(now - self.last, 0.0), MAX_STEP)
        self.last = now
        if paused:
            return None
        if moved_bytes is None:
            self.moved(now)
            return None
        if self.mark is None or moved_bytes >= self.mark + PROGRESS_BYTES:
            self.mark = moved_bytes
            self.moved(now)
            return None
        self.quiet += step
        if not self.reported and self.quiet >= self.warn_after:
            self.reported = True
            return "stalled"  # first, even if late: an ended job was said to stall
        return "expired" if self.quiet >= self.timeout else None
