"""A new repository is created by one job at a time per host: the wait for the host-wide
lock is bounded and cancellable. The holder is a real `flock(1)` process."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from henbackup.config.model import PasswordSource
from henbackup.engine.base import Target
from henbackup.engine.restic import ResticEngine
from henbackup.errors import EngineError, JobCancelled, RepositoryLocked
from henbackup.jobs import backup
from henbackup.jobs.backup import ensure_repository
from henbackup.scheduler import locks

SECRET = "s3cr3t-in-location"


def target_at(tmp_path: Path) -> Target:
    location = f"{tmp_path}/repository-{SECRET}"
    return Target("shared", location, PasswordSource("password", "a password"))


def held_lock(directory: Path, seconds: float) -> tuple[subprocess.Popen[bytes], Path]:
    """A process that holds the one lock file in `directory`."""
    (lock,) = directory.glob("init-*")
    holder = subprocess.Popen(["flock", str(lock), "sleep", str(seconds)])
    deadline = time.monotonic() + 30
    while locks.is_free(lock, locks.EXCLUSIVE):
        assert time.monotonic() < deadline, "flock(1) never took the lock"
        time.sleep(0.01)
    return holder, lock


def prepare(tmp_path: Path, restic: str) -> tuple[ResticEngine, Target, Path]:
    """The engine, a target, and the lock directory with the target's lock file in it."""
    engine, target, directory = ResticEngine(restic), target_at(tmp_path), tmp_path / "locks"
    assert ensure_repository(engine, target, directory) is True  # creates it and the lock file
    return engine, target, directory


def test_the_lock_file_is_per_location_and_names_no_secret(restic, tmp_path):
    engine, target, directory = prepare(tmp_path, restic)
    (lock,) = directory.iterdir()
    assert SECRET not in lock.name and lock.name.startswith("init-")
    assert ensure_repository(engine, target, directory) is False
    assert list(directory.iterdir()) == [lock]


def test_a_job_waits_while_another_holds_the_lock(restic, tmp_path):
    engine, target, directory = prepare(tmp_path, restic)
    holder, _ = held_lock(directory, 1.5)
    try:
        started = time.monotonic()
        assert ensure_repository(engine, target, directory) is False
        assert time.monotonic() - started >= 1.0
    finally:
        holder.wait()


def test_the_wait_is_bounded(restic, tmp_path, monkeypatch):
    engine, target, directory = prepare(tmp_path, restic)
    monkeypatch.setattr(backup, "INIT_WAIT", 0.5)
    holder, _ = held_lock(directory, 30)
    try:
        with pytest.raises(RepositoryLocked) as raised:
            ensure_repository(engine, target, directory)
        assert str(raised.value) == (
            "repository shared: another job of this host has been creating it for over "
            "0.5 s; the next run tries again"
        )
    finally:
        holder.kill()
        holder.wait()


def test_the_wait_is_cancellable(restic, tmp_path):
    engine, target, directory = prepare(tmp_path, restic)
    holder, _ = held_lock(directory, 30)

    def cancel(signum, frame):
        raise JobCancelled("cancelled")

    previous = signal.signal(signal.SIGALRM, cancel)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        started = time.monotonic()
        with pytest.raises(JobCancelled):
            ensure_repository(engine, target, directory)
        assert time.monotonic() - started < 10
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        holder.kill()
        holder.wait()


def test_a_lock_directory_that_cannot_be_made_is_a_one_line_error(restic, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(EngineError) as raised:
        ensure_repository(ResticEngine(restic), target_at(tmp_path), tmp_path / "file" / "locks")
    assert str(raised.value).startswith(f"cannot lock {tmp_path}/file/locks/init-")
    assert str(raised.value).endswith("(to create repository shared): Not a directory")
    assert SECRET not in str(raised.value)
