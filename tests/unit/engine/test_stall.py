"""The stall watch's bookkeeping, and what it reads of a process in /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from henbackup.engine.stall import (
    MAX_STEP,
    PROGRESS_BYTES,
    STALL_WARNING,
    IoCounters,
    StallWatch,
    idle_reason,
    parse_io,
    read_io,
    read_state,
)

# /proc/PID/io of a restic 0.14 backup, as the kernel prints it
PROC_IO = (
    "rchar: 7144448\nwchar: 4100906\nsyscr: 1795\nsyscw: 1283\nread_bytes: 0\n"
    "write_bytes: 4096\ncancelled_write_bytes: 0\n"
)


def test_parse_io_adds_bytes_read_and_written() -> None:
    assert parse_io(PROC_IO) == IoCounters(rchar=7144448, wchar=4100906)
    assert parse_io(PROC_IO).moved == 7144448 + 4100906  # type: ignore[union-attr]
    assert parse_io("rchar: 12\n") is None
    assert parse_io("") is None


def test_read_io_and_state_of_a_live_process_then_of_none() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert isinstance(read_io(child.pid), IoCounters)
        deadline = time.monotonic() + 10
        while read_state(child.pid) != "S" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_state(child.pid) == "S"
        os.kill(child.pid, signal.SIGSTOP)
        while read_state(child.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert idle_reason(read_state(child.pid)) == "stopped (SIGSTOP or a debugger)"
    finally:
        child.kill()
        child.wait()
    assert read_io(child.pid) is None and read_state(child.pid) is None


def test_idle_reasons() -> None:
    assert idle_reason("D") == "blocked in the kernel (a hung disk or network file system?)"
    assert idle_reason("S") is None and idle_reason(None) is None


def looks(watch: StallWatch, samples: list[tuple[float, int | None]]) -> list[str | None]:
    return [watch.look(now, moved) for now, moved in samples]


def test_no_bytes_moved_is_reported_once_then_expires() -> None:
    watch = StallWatch(timeout=10.0, last=0.0)
    verdicts = looks(watch, [(t, 1000) for t in range(1, 13)])
    # the first look sets the mark; warned at half the timeout, ended at the timeout
    assert verdicts == [None] * 5 + ["stalled"] + [None] * 4 + ["expired", "expired"]


def test_the_warning_comes_after_a_minute_at_most() -> None:
    watch = StallWatch(timeout=600.0, last=0.0)
    assert watch.warn_after == STALL_WARNING == 60.0
    assert StallWatch(timeout=3.0, last=0.0).warn_after == 1.5


def test_bytes_moved_restart_the_count_and_a_new_stall_is_reported_again() -> None:
    watch = StallWatch(timeout=10.0, last=0.0)
    assert looks(watch, [(t, 0) for t in range(0, 6)])[-1] == "stalled"
    assert watch.look(7.0, PROGRESS_BYTES) is None  # moved: the stall is over
    assert watch.quiet == 0.0
    verdicts = looks(watch, [(t, PROGRESS_BYTES) for t in range(8, 14)])
    assert verdicts == [None] * 4 + ["stalled", None]


def test_a_trickle_below_the_noise_floor_adds_up_to_progress() -> None:
    watch = StallWatch(timeout=10.0, last=0.0)
    step = PROGRESS_BYTES // 4
    verdicts = looks(watch, [(t, t * step) for t in range(0, 12)])
    assert "expired" not in verdicts and "stalled" not in verdicts
    assert watch.quiet < 4


def test_output_jitter_below_the_floor_is_no_progress() -> None:
    watch = StallWatch(timeout=4.0, last=0.0)
    # a status line read a little late: the count goes up and down by a few hundred bytes
    verdicts = looks(watch, [(t, 10_000 + (300 if t % 2 else 0)) for t in range(0, 5)])
    assert verdicts[-1] == "expired"


def test_unknown_counts_never_stall() -> None:
    watch = StallWatch(timeout=2.0, last=0.0)
    assert looks(watch, [(t, None) for t in range(0, 10)]) == [None] * 10


def test_the_tools_own_counters_are_progress_too() -> None:
    watch = StallWatch(timeout=4.0, last=0.0)
    assert looks(watch, [(0, 0), (1, 0), (2, 0)]) == [None, None, "stalled"]
    watch.moved(2.5)  # a status line with more files done: no byte would have expired it at 4
    assert looks(watch, [(3, 0), (4, 0), (5, 0)]) == [None, None, "stalled"]


@pytest.mark.parametrize("gap", [30.0, 3600.0])
def test_time_while_the_watcher_itself_was_frozen_does_not_count(gap: float) -> None:
    """A paused job (its cgroup frozen) comes back to a long gap: at most MAX_STEP of it
    counts, so the job is not ended the moment it is thawed."""
    watch = StallWatch(timeout=20.0, last=0.0)
    looks(watch, [(0, 0), (1, 0)])
    assert watch.look(1 + gap, 0) is None
    assert watch.quiet == 1 + MAX_STEP


def test_a_stall_is_reported_before_it_expires_even_when_a_look_comes_late() -> None:
    watch = StallWatch(timeout=3.0, last=0.0)
    assert looks(watch, [(0, 0), (1, 0), (4, 0), (5, 0)]) == [None, None, "stalled", "expired"]


def test_time_while_the_tool_is_paused_on_purpose_does_not_count() -> None:
    """Preemption pauses restic for as long as a superior job runs: no stall, nor a stall
    that expires the moment it goes on; the quiet time before the pause still counts."""
    watch = StallWatch(timeout=4.0, last=0.0)
    assert looks(watch, [(0, 0), (1, 0)]) == [None, None]
    assert [watch.look(t, 0, paused=True) for t in range(2, 60)] == [None] * 58
    assert watch.quiet == 1.0
    assert looks(watch, [(60, 0), (61, 0), (62, 0)]) == ["stalled", None, "expired"]
