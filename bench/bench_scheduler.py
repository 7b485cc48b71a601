"""Slot hand-off latency of the host-wide queue, with 50 contending job processes.

With max_concurrent_jobs = 1, 50 forked job processes queue behind a holder. Each, at its
turn, notes the time it was granted, then releases at once: a hand-off is the time from one
holder starting `release()` to the next one granted (CLOCK_MONOTONIC is shared by all
processes). The baseline is the kernel alone: 50 processes blocked in flock(LOCK_EX) on one
file, handing it over the same way. A third row kills each holder with SIGKILL instead:
the parent reaps it and nudges, as the master does (kill to next grant). The last row is
issue 5's measure, end to end: from a release to the next job's restic process having
started (exec done), through the real engine, on a local repository.
"""

from __future__ import annotations

import fcntl
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.table import Goal, Table
from henbackup.config.model import PasswordSource, Priority
from henbackup.engine.base import Target
from henbackup.engine.restic import ResticEngine
from henbackup.scheduler import Scheduler, Ticket

CONTENDERS = 50
ROUNDS = 3
GOAL_MS = 50.0
NORMAL = Priority.ordinary(0)


def _fork(child: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    return pid


def _read_lines(fd: int, count: int) -> list[list[int]]:
    """`count` lines of integers written (atomically, < PIPE_BUF each) to pipe `fd`."""
    data = b""
    while data.count(b"\n") < count:
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError("a contender died before reporting")
        data += chunk
    return [[int(v) for v in line.split()] for line in data.splitlines()]


def _handoffs(start: int, records: list[list[int]]) -> list[float]:
    """Milliseconds from each release to the next grant; records are (grant, release)."""
    records.sort()
    releases = [start] + [release for _, release in records[:-1]]
    return [(grant - release) / 1e6 for (grant, _), release in zip(records, releases, strict=True)]


def _queue_round(directory: Path, job: Callable[[], int] = time.monotonic_ns) -> list[float]:
    """Release → the next holder's `job()` (which returns when, in monotonic ns, its job
    started: by default at once, on being granted)."""
    scheduler = Scheduler(directory)
    scheduler.set_slots(1)
    blocker = scheduler.submit(Ticket("blocker", "r", NORMAL)).grant
    assert blocker is not None
    queued_r, queued_w = os.pipe()
    times_r, times_w = os.pipe()

    def contender(number: int) -> None:
        waiter = Scheduler(directory).submit(Ticket(f"job{number}", "r", NORMAL))
        os.write(queued_w, b"0\n")
        grant = waiter.wait()
        started = job()
        released = time.monotonic_ns()
        grant.release()
        os.write(times_w, f"{started} {released}\n".encode())

    pids = [_fork(lambda n=n: contender(n)) for n in range(CONTENDERS)]
    _read_lines(queued_r, CONTENDERS)
    start = time.monotonic_ns()
    blocker.release()
    records = _read_lines(times_r, CONTENDERS)
    for pid in pids:
        os.waitpid(pid, 0)
    for fd in (queued_r, queued_w, times_r, times_w):
        os.close(fd)
    return _handoffs(start, records)


def _restic_round(directory: Path) -> list[float]:
    """Release → the next job's restic has started (the engine's on_spawn: after exec)."""
    target = Target("bench", str(directory / "repository"), PasswordSource("password", "bench"))
    ResticEngine().ensure_initialized(target)

    def job() -> int:
        started: list[int] = []
        ResticEngine(on_spawn=lambda pid: started.append(time.monotonic_ns())).snapshots(target)
        return started[0]

    return _queue_round(directory / "queue", job)


def _flock_round(directory: Path) -> list[float]:
    path = directory / "flock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    ready_r, ready_w = os.pipe()
    times_r, times_w = os.pipe()

    def contender() -> None:
        os.close(holder)  # inherited: the same open file, so the same lock as the parent's
        fd = os.open(path, os.O_RDWR)
        os.write(ready_w, b"0\n")
        fcntl.flock(fd, fcntl.LOCK_EX)
        granted = time.monotonic_ns()
        released = time.monotonic_ns()
        os.close(fd)
        os.write(times_w, f"{granted} {released}\n".encode())

    pids = [_fork(contender) for _ in range(CONTENDERS)]
    _read_lines(ready_r, CONTENDERS)
    start = time.monotonic_ns()
    os.close(holder)
    records = _read_lines(times_r, CONTENDERS)
    for pid in pids:
        os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, times_r, times_w):
        os.close(fd)
    return _handoffs(start, records)


def _kill_round(directory: Path) -> list[float]:
    scheduler = Scheduler(directory)
    scheduler.set_slots(1)
    blocker = scheduler.submit(Ticket("blocker", "r", NORMAL)).grant
    assert blocker is not None
    queued_r, queued_w = os.pipe()
    times_r, times_w = os.pipe()
    hang_r, hang_w = os.pipe()

    def contender(number: int) -> None:
        waiter = Scheduler(directory).submit(Ticket(f"job{number}", "r", NORMAL))
        os.write(queued_w, b"0\n")
        waiter.wait()
        os.write(times_w, f"{time.monotonic_ns()} {os.getpid()}\n".encode())
        os.read(hang_r, 1)  # hold until killed

    for number in range(CONTENDERS):  # each is killed and reaped below
        _fork(lambda n=number: contender(n))
    _read_lines(queued_r, CONTENDERS)
    blocker.release()
    latencies = []
    killed = None
    for _ in range(CONTENDERS):
        granted, pid = _read_lines(times_r, 1)[0]
        if killed is not None:
            latencies.append((granted - killed) / 1e6)
        killed = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # the master reaps...
        scheduler.nudge()  # ...and nudges
    for fd in (queued_r, queued_w, times_r, times_w, hang_r, hang_w):
        os.close(fd)
    return latencies


def _row(name: str, samples: list[float], baseline: float) -> tuple[object, ...]:
    median = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10)[-1]
    return (name, len(samples), median, p90, f"{median / baseline:.1f}x", Goal(GOAL_MS, unit="ms"))


def run() -> Table:
    """Measure each way over ROUNDS rounds of CONTENDERS job processes."""
    samples: dict[str, list[float]] = {"flock": [], "queue": [], "kill": [], "restic": []}
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        for number in range(ROUNDS):
            root = Path(tmp) / str(number)
            for way, measure in (("flock", _flock_round), ("queue", _queue_round)):
                (root / way).mkdir(parents=True)
                samples[way] += measure(root / way)
            (root / "kill").mkdir()
            samples["kill"] += _kill_round(root / "kill")
        (Path(tmp) / "restic").mkdir()
        samples["restic"] += _restic_round(Path(tmp) / "restic")  # one round: restic is slow
    baseline = statistics.median(samples["flock"])
    return Table(
        title=(
            f"bench_scheduler: slot hand-off with {CONTENDERS} contending job processes,"
            f" {ROUNDS} rounds (milliseconds)"
        ),
        headers=("hand-off", "samples", "median", "p90", "vs flock", "goal"),
        rows=(
            (
                "bare flock (baseline)",
                len(samples["flock"]),
                baseline,
                statistics.quantiles(samples["flock"], n=10)[-1],
                "1.0x",
                "",
            ),
            _row("queue: release -> next granted", samples["queue"], baseline),
            _row("queue: kill -9, reap, nudge -> next granted", samples["kill"], baseline),
            _row("queue: release -> next job's restic started", samples["restic"], baseline),
        ),
        value_column="median",
    )


def main() -> None:
    print(run().render())


if __name__ == "__main__":
    main()
