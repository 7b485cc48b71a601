"""Pausing a job's programs with SIGSTOP, on real processes: a stand-in job process with a
program in a session of its own, as process.spawn starts restic (the freezer path runs in
tests/integration/test_preemption.py, on this host's cgroup v1 freezer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from henbackup.engine.stall import read_state
from henbackup.limits.cgroups import Host
from henbackup.limits.pause import children, freezer_of, marked, pause, resume, resume_leftovers

JOB_PROCESS = (
    "import subprocess, sys\n"
    "program = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
    "print(program.pid, flush=True)\n"
    "sys.stdin.read()\n"
    "program.kill()\n"
)


@pytest.fixture
def job_process() -> Iterator[tuple[int, int]]:
    """(the job process's pid, its program's pid)."""
    process = subprocess.Popen(
        [sys.executable, "-c", JOB_PROCESS], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    program = int(process.stdout.readline())
    yield process.pid, program
    process.communicate(timeout=10) if process.poll() is None else process.wait()


def state_becomes(pid: int, wanted: str) -> bool:
    deadline = time.monotonic() + 10
    while read_state(pid) != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    return read_state(pid) == wanted


def test_the_program_is_stopped_not_the_job_process_and_goes_on_when_resumed(
    job_process: tuple[int, int], tmp_path: Path
) -> None:
    job, program = job_process
    marks = tmp_path / "paused"
    assert children(job) == [program]
    assert freezer_of(program) is None  # in no job leaf: SIGSTOP
    assert not marked(marks, job)
    assert pause(marks, job) == "SIGSTOP"
    assert marked(marks, job)
    assert state_becomes(program, "T")
    assert read_state(job) in ("S", "R")  # it may hold the queue's lock: never stopped
    resume(marks, job)
    assert not marked(marks, job)
    assert state_becomes(program, "S")


def test_a_process_named_in_bytes_that_are_not_utf8_is_found_and_paused(tmp_path: Path) -> None:
    """Any user may name a process so (a name cut inside a character is one): the master
    reading /proc must neither fail on it nor miss it."""
    naming = "import sys; open('/proc/self/comm', 'wb').write(b'x\\xe2\\x86'); input()"
    with subprocess.Popen([sys.executable, "-c", naming], stdin=subprocess.PIPE) as program:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{program.pid}/comm").read_bytes() != b"x\xe2\x86\n":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert program.pid in children(os.getpid())  # beside the servers of other tests
        program.kill()


def test_a_job_process_running_no_program_has_nothing_to_pause(tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE) as process:
        assert pause(tmp_path / "paused", process.pid) is None
        assert marked(tmp_path / "paused", process.pid)  # its next program is paused then
        resume(tmp_path / "paused", process.pid)
        process.communicate(b"\n", timeout=10)


def test_what_a_master_that_died_left_stopped_goes_on_at_the_next_start(
    job_process: tuple[int, int], tmp_path: Path
) -> None:
    """The job process dies with its master (SIGKILL): its stopped restic would stay
    stopped, holding its repository lock, for ever."""
    job, program = job_process
    marks = tmp_path / "paused"
    assert pause(marks, job) == "SIGSTOP"
    os.kill(job, signal.SIGKILL)
    assert state_becomes(program, "T")
    resume_leftovers(marks, Host("none"))
    try:
        assert state_becomes(program, "S")
        assert list(marks.iterdir()) == []
    finally:
        os.kill(program, signal.SIGKILL)


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\n", "\u00b2\n".encode(), b"99999999999999999999\n", b"9" * 5000, b"0\n", b"12 x\n"],
)
def test_a_mark_naming_no_pid_is_stale_and_goes_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    """Non-UTF-8 bytes, a Unicode digit, a number beyond any pid (killpg: OverflowError) or
    0 (the master's own group): no program is signalled, the master starts, the mark goes."""
    signalled: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pid, _signum: signalled.append(pid))
    monkeypatch.setattr(os, "kill", lambda pid, _signum: signalled.append(pid))
    marks = tmp_path / "paused"
    marks.mkdir()
    (marks / "4242").write_bytes(content)
    resume_leftovers(marks, Host("none"))
    assert signalled == []
    assert list(marks.iterdir()) == []


def test_a_job_process_that_dies_while_paused_leaves_nothing_paused(
    job_process: tuple[int, int], tmp_path: Path
) -> None:
    """The job process dies (its worker was killed), not the master: its stopped restic,
    now the master's, goes on when the master resumes the job, and its frozen leaf thaws;
    else restic would hold its repository's lock until the daemon restarts."""
    job, program = job_process
    marks = tmp_path / "paused"
    leaf = tmp_path / "cgroup" / f"job-{job}"  # as this host lays it out, frozen
    leaf.mkdir(parents=True)
    (leaf / "cgroup.freeze").write_text("1")
    assert pause(marks, job) == "SIGSTOP"
    os.kill(job, signal.SIGKILL)
    assert state_becomes(program, "T")
    resume(marks, job, Host("v2", {"": tmp_path / "cgroup"}))
    try:
        assert state_becomes(program, "S")
        assert (leaf / "cgroup.freeze").read_text() == "0"
        assert not marked(marks, job)
    finally:
        os.kill(program, signal.SIGKILL)


def test_what_cannot_be_marked_is_not_paused_and_nothing_raises(
    job_process: tuple[int, int], tmp_path: Path
) -> None:
    """A full /run (here: a file where the marks directory should be): the pause would go
    unmarked, and the job's stall watch would count it as no progress."""
    job, program = job_process
    marks = tmp_path / "paused"
    marks.write_text("")  # mkdir fails as ENOSPC would
    assert pause(marks, job) is None
    time.sleep(0.2)
    assert read_state(program) == "S"
