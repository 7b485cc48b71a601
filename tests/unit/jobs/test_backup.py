"""A new repository is created by one job at a time per host: the wait for the host-wide
lock is bounded and cancellable. The holder is a real `flock(1)` process."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from henbackup.config.model import PasswordSource
from henbackup.engine.base import BackupRequest, BackupResult, Target
from henbackup.engine.restic import ResticEngine
from henbackup.errors import EngineError, JobCancelled, RepositoryLocked, RepositoryMissing
from henbackup.jobs import backup
from henbackup.jobs.backup import ensure_repository
from henbackup.jobs.job import Job
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


def test_a_repository_gone_from_where_this_host_backed_up_is_not_made_again(
    restic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk not mounted: a new repository in the empty mount point would fill the disk
    below with backups nobody knows of. Only where none ever was is one created."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "photo.jpg").write_bytes(b"jpeg\n")
    target, engine = target_at(tmp_path), ResticEngine(restic)
    request = BackupRequest("pictures", (str(tmp_path / "data"),))
    job = Job("backup", "shared", "pictures")

    def back_up() -> tuple[BackupResult, bool]:
        return backup._back_up(job, engine, target, request, lambda *a, **k: None)

    assert back_up()[1] is True  # none was there: made
    assert back_up()[1] is False
    Path(target.location).rename(tmp_path / "unmounted")  # its disk is not mounted
    with pytest.raises(RepositoryMissing) as raised:
        back_up()
    (known,) = (tmp_path / "state" / "repositories").iterdir()
    assert str(raised.value) == (
        "repository shared: no repository is at its location any more, though this host"
        " backed up there before: is its disk mounted, is it the right server? A repository"
        f" is created only where none ever was (to start a new one there, remove {known})"
    )
    assert not Path(target.location).exists() and SECRET not in known.name
    known.unlink()  # the owner starts afresh there
    assert back_up()[1] is True
