"""Is a ticket's owner still alive? /proc answers, guarded against pid reuse."""

from __future__ import annotations

# The kernel's PID_MAX_LIMIT: a number from outside at or above it is no pid (os.kill would
# raise OverflowError), and one below 1 is a group or every process (os.kill(-1, ...)).
PID_MAX = 1 << 22


def is_pid(value: object) -> bool:
    return type(value) is int and 0 < value < PID_MAX


def start_time(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot), or None when it is dead.

    A zombie counts as dead: it has already released every lock it held. Reads field 22 of
    /proc/PID/stat, after the command name, which may itself contain spaces and parentheses.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):  # fields[0] is field 3, the state
        return None
    return int(fields[19])


def alive(pid: int, started: int) -> bool:
    """Whether process `pid` is alive and is the one that started at `started`."""
    return pid > 0 and start_time(pid) == started
