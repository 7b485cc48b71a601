"""stop_program: the signals, a grace to act on them, then SIGKILL, reaped (real programs)."""

from __future__ import annotations

import signal
import subprocess
import time

from henbackup.errors import JobCancelled
from henbackup.process import spawn, stop_program


def _start(script: str, **popen) -> subprocess.Popen[bytes]:
    process, mask = spawn(["sh", "-c", script], signal.SIGKILL, **popen)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return process


def _ready(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"  # its trap is set


def test_a_program_that_acts_on_the_signal_ends_by_it_and_is_reaped():
    process = _start("sleep 60", start_new_session=True)
    stop_program(process, (signal.SIGTERM,), 30.0, process.wait)
    assert process.returncode == -signal.SIGTERM


def test_a_program_that_ignores_the_signal_is_killed_after_the_grace():
    process = _start("trap '' INT; echo ready; sleep 60", stdout=subprocess.PIPE)
    _ready(process)
    start = time.monotonic()
    stop_program(process, (signal.SIGINT,), 0.3, lambda deadline: time.sleep(0.3))
    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - start < 30  # not the sleep's 60 s


def test_a_stop_during_the_grace_changes_nothing():
    process = _start("trap '' TERM; echo ready; sleep 60", stdout=subprocess.PIPE)
    _ready(process)
    calls = []

    def interrupted_once(deadline: float) -> None:
        calls.append(deadline)
        if len(calls) == 1:
            raise JobCancelled("cancelled")  # what a safe point raises during the wait
        time.sleep(max(0.0, deadline - time.monotonic()))

    stop_program(process, (signal.SIGTERM,), 0.3, interrupted_once)
    assert len(calls) == 2 and calls[0] == calls[1]  # the same deadline, waited out
    assert process.returncode == -signal.SIGKILL


def test_a_group_stop_kills_the_stragglers_the_leader_left():
    process = _start(
        "sleep 60 >/dev/null & echo $!; exit 0", stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    straggler = int(process.stdout.readline())
    assert process.stdout.read() == b""  # the leader is gone (not reaped), its child not
    stop_program(process, (signal.SIGTERM,), 10.0, lambda deadline: process.wait(), group=True)
    assert process.returncode == 0
    deadline = time.monotonic() + 30
    while _alive(straggler) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(straggler)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
