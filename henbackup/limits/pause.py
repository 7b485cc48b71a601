"""Pausing a job's programs (preemption): the cgroup freezer where its leaf has one, else
SIGSTOP to each program's process group.

Only the programs are paused (restic, a command hook), never the job process itself: it may
hold the queue's lock, and a frozen holder would stop the whole host's queue. Its programs
are its children; each leads a process group of its own (process.spawn). A program in one
of our job leaves (`job-PID`, see cgroups.py) is frozen with its leaf: a program it starts
meanwhile enters the frozen leaf and is frozen too. One outside any job leaf (a job without
resources, or no cgroup here) is stopped; pausing again stops the ones started since.
A paused job process is marked (a file named by its pid in the marks directory) so that
its stall watch does not count the pause as no progress.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Literal

from henbackup.limits.cgroups import ROOT, Host, freeze, own_cgroups, thaw
from henbackup.scheduler.procs import is_pid

How = Literal["freezer", "SIGSTOP"]
JOB_LEAF_PREFIX = "job-"


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The processes whose parent is `pid` (read from /proc/*/stat)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = (entry / "stat").read_bytes()  # bytes: a name is not always UTF-8
        except OSError:  # gone meanwhile
            continue
        fields = data.rpartition(b")")[2].split()  # the name in parentheses may hold anything
        if len(fields) > 1 and fields[1] == str(pid).encode():
            found.append(int(entry.name))
    return found


def freezer_of(pid: int, root: Path = ROOT) -> Path | None:
    """The freezer file of `pid`'s job leaf (v2 cgroup.freeze, v1 freezer.state), or None
    when it is in no job leaf with a freezer (the daemon's own cgroup is never frozen)."""
    try:
        own = own_cgroups(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None
    places = [(root / "freezer", own.get("freezer"), "freezer.state")]
    places.append((root, own.get(""), "cgroup.freeze"))
    for base, path, name in places:
        if path is None or not Path(path).name.startswith(JOB_LEAF_PREFIX):
            continue
        file = base / path.lstrip("/") / name
        if file.exists():
            return file
    return None


def marked(marks: Path, job_pid: int) -> bool:
    """Whether the programs of job process `job_pid` are paused by the master (its stall
    watch does not count that time: a program someone else stopped is a stall)."""
    return (marks / str(job_pid)).exists()


def pause(marks: Path, job_pid: int) -> How | None:
    """Pause the programs of job process `job_pid`, marked in `marks` first; returns how
    (the freezer if any of them was frozen so), or None when it pauses none now. Never
    raises: a program that ended is skipped, and what cannot be marked (a full /run) is
    not paused (its stall watch would count the pause as no progress)."""
    mark = marks / str(job_pid)
    stopped = _stopped(mark)
    try:
        marks.mkdir(mode=0o700, exist_ok=True)
        if not mark.exists():
            mark.touch(mode=0o600)  # marked first: its stall watch never counts the pause
    except OSError:
        return None
    how: How | None = None
    for child in children(job_pid):
        file = freezer_of(child)
        if file is not None:
            with contextlib.suppress(OSError):
                freeze(file, True)
                how = "freezer"
                continue
        if child not in stopped:  # named before it stops: a master that dies leaves a trace
            try:
                mark.write_text("".join(f"{pid}\n" for pid in sorted(stopped | {child})))
            except OSError:
                continue
            stopped.add(child)
        if _signal_program(job_pid, child, signal.SIGSTOP):
            how = how or "SIGSTOP"
    return how


def _stopped(mark: Path) -> set[int]:
    """The programs a mark says were stopped (what a master that died left stopped); none
    when it holds anything but pids in ASCII digits (it is then stale, and goes)."""
    try:
        words = mark.read_bytes().split()
    except OSError:
        return set()
    if not all(len(word) <= 7 and word.isdigit() and is_pid(int(word)) for word in words):
        return set()  # bytes.isdigit: ASCII only ("²" is a digit to str.isdigit, not int())
    return {int(word) for word in words}


def resume_leftovers(marks: Path, host: Host) -> None:
    """At the master's start: what a master that died left paused goes on (and can end):
    the programs its marks name get SIGCONT, the job leaves of job processes that are gone
    are thawed, and the marks go."""
    with contextlib.suppress(OSError):
        for mark in marks.iterdir():
            _continue(_stopped(mark))
            mark.unlink(missing_ok=True)
    for base in _freezer_bases(host):
        for leaf in base.glob(f"{JOB_LEAF_PREFIX}*"):
            pid = leaf.name.removeprefix(JOB_LEAF_PREFIX)
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                thaw(leaf)


def resume(marks: Path, job_pid: int, host: Host | None = None) -> None:
    """Resume what `pause` paused (and any program of it stopped since), then unmark it.
    A job process that died while paused left its programs to the master, frozen in its
    leaf or stopped: its leaf in `host` is thawed and the programs its mark names go on,
    to end (a frozen restic would hold its repository's lock for ever)."""
    mark = marks / str(job_pid)
    for child in children(job_pid):
        file = freezer_of(child)
        if file is not None:
            with contextlib.suppress(OSError):
                freeze(file, False)
        _signal_program(job_pid, child, signal.SIGCONT)  # also one stopped before it froze
    _continue(_stopped(mark))
    if host is not None:
        for base in _freezer_bases(host):
            thaw(base / f"{JOB_LEAF_PREFIX}{job_pid}")
    mark.unlink(missing_ok=True)


def _freezer_bases(host: Host) -> list[Path]:
    return [base for base in {host.bases.get("freezer"), host.bases.get("")} if base]


def _continue(programs: set[int]) -> None:
    """SIGCONT to stopped programs named in a mark (a reused pid gets a harmless one)."""
    for pid in programs:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGCONT)  # restic and what it started (rclone, ssh)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)  # a program in its job process's group


def _signal_program(job_pid: int, child: int, signum: int) -> bool:
    """`signum` to `child`'s process group, or to it alone if it shares the job process's
    group (never to the job process); returns whether it was sent."""
    try:
        group = os.getpgid(child)
        if group == child and group != os.getpgid(job_pid):
            os.killpg(group, signum)
        else:
            os.kill(child, signum)
    except ProcessLookupError:  # it ended meanwhile
        return False
    return True
