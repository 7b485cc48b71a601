"""Issue 12, "never corrupt": no repository is ever corrupted, no lock is left behind.

Through the real daemon (`henbackup run`, see tests/integration/daemon_helpers.py), real
restic on a real local repository. Faults are real too: restic and job processes are killed
with SIGKILL, as the OOM killer would; stopping restic first (SIGSTOP) only holds it where
the test wants it (alive with its lock, or orphaned before it could react).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from henbackup.config.model import PasswordSource
from henbackup.engine.base import Target
from henbackup.engine.restic import ResticEngine
from henbackup.jobs.backup import ensure_repository

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from daemon_helpers import PASSWORD, Daemon, henbackupctl, locks, ok, restic_command, restic_json

pytestmark = pytest.mark.integration

HOST = "testhost"
DEADLINE = 60.0  # generous: a busy 2-core machine; never asserted on, only waited for


def write_config(
    tmp_path: Path, restic: str, repository: Path | str, backups: dict[str, dict[str, str]]
) -> Path:
    """max_concurrent_jobs = 3; one repository, `shared`; these backups to it."""
    lines = [
        "[daemon]",
        f"restic = {json.dumps(restic)}",
        f'hostname = "{HOST}"',
        "max_concurrent_jobs = 3",
        "",
        "[repositories.shared]",
        f"location = {json.dumps(str(repository))}",
        f"password = {json.dumps(PASSWORD)}",
    ]
    for name, settings in backups.items():
        lines += ["", f"[backups.{name}]", 'repositories = ["shared"]']
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    config = tmp_path / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def make_data(directory: Path, size: int = 30_000) -> str:
    directory.mkdir(parents=True)
    (directory / "notes.txt").write_text(f"the notes of {directory.name}\n")
    (directory / "data.bin").write_bytes(os.urandom(size))  # random: restic 0.18 compresses
    return str(directory)


def outcome(daemon: Daemon, backup: str) -> dict:
    """The backup job's job.succeeded or job.failed event, once there is one."""
    found: list[dict] = []

    def ended() -> bool:
        found[:] = [
            e
            for e in daemon.find(backup=backup, operation="backup")
            if e["HENBACKUP_EVENT"] in ("job.succeeded", "job.failed")
        ]
        return bool(found) or daemon.eof

    assert daemon.pump_until(ended, DEADLINE) and found, f"{backup}: no end\n{daemon.report()}"
    return found[0]


def restic_backup_of(daemon: Daemon) -> psutil.Process:
    """The `restic backup` the daemon runs (waits for it)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for process in psutil.Process(daemon.pid).children(recursive=True):
            try:
                if process.name() == "restic" and "backup" in process.cmdline():
                    return process
            except psutil.Error:
                continue
        daemon.pump(0.05)
    raise AssertionError(f"no restic backup ran\n{daemon.report()}")


def wait_locked(daemon: Daemon, restic: str, repository: Path) -> list[str]:
    assert daemon.pump_until(lambda: locks(restic, repository) != [], DEADLINE), (
        "restic never locked the repository\n" + daemon.report()
    )
    return locks(restic, repository)


def reaped(pid: int) -> bool:
    """Gone for good: neither running nor a zombie nobody waited for."""
    try:
        return psutil.Process(pid).status() == "dead"
    except psutil.NoSuchProcess:
        return True


# --- item 1: one restic init per repository -------------------------------------------------


@contextlib.contextmanager
def rest_server(directory: Path) -> Iterator[str]:
    """`rclone serve restic` on 127.0.0.1 over `directory`: restic's REST backend, where the
    config file is an HTTP request away. Yields the repository's location."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory.mkdir()
    server = subprocess.Popen(
        ["rclone", "serve", "restic", str(directory), "--addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            assert server.poll() is None and time.monotonic() < deadline, "rclone did not start"
            time.sleep(0.05)
        yield f"rest:http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=DEADLINE)


@contextlib.contextmanager
def new_repository(backend: str, tmp_path: Path) -> Iterator[str]:
    """The location of a repository that does not exist yet."""
    if backend == "rest":
        with rest_server(tmp_path / "rest") as location:
            yield location
    else:
        yield str(tmp_path / "new-repository")


@pytest.mark.parametrize("backend", ["local", "rest"])
def test_three_first_backups_at_once_make_one_repository_that_restic_opens(
    restic, tmp_path, backend
):
    """Three backups share a repository that does not exist yet, and all three run at start
    (their schedule never ran) in three slots: each job finds no repository. One creates it,
    under a host-wide lock; the others find it. Before, each ran `restic init`: several keys,
    and a repository restic could no longer open ("ciphertext verification failed")."""
    with new_repository(backend, tmp_path) as location:
        three_first_backups(restic, tmp_path, location)


def three_first_backups(restic: str, tmp_path: Path, repository: str) -> None:
    names = ("alpha", "beta", "gamma")
    backups = {n: {"paths": [make_data(tmp_path / n)], "schedule": ["1h"]} for n in names}
    daemon = Daemon(write_config(tmp_path, restic, repository, backups), tmp_path)
    with daemon:
        ends = {name: outcome(daemon, name) for name in names}
        assert {n: e["HENBACKUP_EVENT"] for n, e in ends.items()} == dict.fromkeys(
            names, "job.succeeded"
        ), daemon.report()
        assert daemon.stop() == 0, daemon.report()

    assert len(restic_command(restic, repository, "list", "keys").stdout.split()) == 1
    restic_command(restic, repository, "check")
    snapshots = restic_json(restic, repository, "snapshots")
    assert sorted(s["tags"][0] for s in snapshots) == [f"backup-{n}" for n in names]
    for snapshot in snapshots:  # every snapshot loads, its data too
        listed = restic_command(restic, repository, "ls", snapshot["id"]).stdout.decode()
        assert "data.bin" in listed
    assert {e["HENBACKUP_SNAPSHOT"][:8] for e in ends.values()} == {
        s["short_id"] for s in snapshots
    }


def test_a_repository_created_elsewhere_between_our_look_and_our_init_is_initialised(
    restic, tmp_path
):
    """Another host (beyond our lock) creates the repository after our `restic cat config`
    found none and before our `restic init`: restic refuses to init ("config file already
    exists") and the repository is there, so the backup goes on. Provoked with a wrapper
    around the real restic (another host's timing cannot be arranged): its `cat config`
    answers what restic answered, after the other host's real `restic init` ran."""
    repository = tmp_path / "repository"
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    wrapper = tmp_path / "restic-wrapper"
    wrapper.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            if [ "$1" = cat ]; then
                answer=$({restic} "$@" 2>&1); code=$?
                {restic} init >/dev/null 2>&1 || exit 99  # the other host, same password
                printf '%s\\n' "$answer" >&2
                exit $code
            fi
            exec {restic} "$@"
            """
        )
    )
    wrapper.chmod(0o755)
    engine = ResticEngine(str(wrapper), cache_dir=tmp_path / "cache")
    target = Target("shared", str(repository), PasswordSource("file", str(password)))
    assert ensure_repository(engine, target, tmp_path / "locks") is False
    assert engine.snapshots(target) == []
    assert len(restic_command(restic, repository, "list", "keys").stdout.split()) == 1


# --- item 5: no lock left behind -------------------------------------------------------------


def slow_backups(tmp_path: Path, restic: str) -> tuple[Daemon, Path]:
    """An initialised repository; `big` takes ~16 s (16 MiB at 1 MiB/s), `small` a moment."""
    repository = tmp_path / "repository"
    restic_command(restic, repository, "init")
    backups = {
        "big": {"paths": [make_data(tmp_path / "big", 16 << 20)], "upload_limit": "1M"},
        "small": {"paths": [make_data(tmp_path / "small")]},
    }
    return Daemon(write_config(tmp_path, restic, repository, backups), tmp_path), repository


def test_restic_killed_during_a_backup_leaves_no_lock_and_the_next_jobs_run_at_once(
    restic, tmp_path
):
    """restic dies by SIGKILL mid-backup: it cannot remove its lock, so the job does (the
    lock is stale: its process is gone). Before, the lock stayed until a later check or
    prune ran into it."""
    daemon, repository = slow_backups(tmp_path, restic)
    with daemon:
        daemon.wait_for("daemon.started", timeout=DEADLINE)
        ok(henbackupctl(daemon, "backup", "big", "--no-wait"))
        process = restic_backup_of(daemon)
        wait_locked(daemon, restic, repository)
        process.kill()
        assert outcome(daemon, "big")["HENBACKUP_EVENT"] == "job.failed"
        assert locks(restic, repository) == []

        started = time.monotonic()
        ok(henbackupctl(daemon, "backup", "small"))
        ok(henbackupctl(daemon, "check", "shared"))  # needs the repository alone
        assert time.monotonic() - started < DEADLINE
        assert locks(restic, repository) == []
        assert daemon.stop() == 0, daemon.report()
        assert daemon.leftovers == [], daemon.report()


def test_restic_orphaned_by_a_killed_job_is_reaped_by_the_master_and_its_lock_goes_later(
    restic, tmp_path
):
    """The job process dies by SIGKILL while restic runs. restic (held stopped, with its
    lock) is orphaned: the master, a child subreaper, adopts it. Killed in turn, restic
    leaves its lock, and the master reaps it: no zombie whose pid restic's unlock would
    count as alive. While restic lived, its lock stayed (another backup ran beside it);
    once it is gone, the next job that needs the repository alone removes the stale lock."""
    daemon, repository = slow_backups(tmp_path, restic)
    with daemon:
        daemon.wait_for("daemon.started", timeout=DEADLINE)
        ok(henbackupctl(daemon, "backup", "big", "--no-wait"))
        process = restic_backup_of(daemon)
        lock = wait_locked(daemon, restic, repository)
        job_process = psutil.Process(process.ppid())
        process.suspend()
        try:
            job_process.kill()
            adopted = daemon.pump_until(lambda: process.ppid() == daemon.pid, DEADLINE, 0.05)
            assert adopted, f"restic's parent is {process.ppid()}, not the master {daemon.pid}"
            assert outcome(daemon, "big")["HENBACKUP_EVENT"] == "job.failed"
            ok(henbackupctl(daemon, "backup", "small"))
            assert process.is_running()
            assert locks(restic, repository) == lock  # alive: its lock is not stale
        finally:
            process.kill()
        assert daemon.pump_until(lambda: reaped(process.pid), DEADLINE), (
            f"restic {process.pid} is {process.status()}\n{daemon.report()}"
        )
        assert locks(restic, repository) == lock
        ok(henbackupctl(daemon, "check", "shared"))
        assert locks(restic, repository) == []
        assert daemon.stop() == 0, daemon.report()
        assert daemon.leftovers == [], daemon.report()
