"""Issue 12, "Tests you can count": the faults henbackup survives today, injected into the real
daemon (`henbackup run` as a subprocess, real restic, real local repositories, real tmpfs
mounts: the tests run as root), so that they stay survived.

Each test injects one fault and asserts what survives it: the daemon answers, the events say
what happened (kinds and fields), the repository is unlocked and `restic check` is clean, no
snapshot is lost, and the data restores byte for byte where it matters.

Where a backup must still be running when the fault comes, it backs up a few MiB of random
bytes under an upload limit: restic then takes seconds, and the test waits for it to hold
its lock (never for a fixed time). One restic version is enough where the fault is the
daemon's (its processes, its signals, its files); the full repository involves restic's own
error output, so that test runs on both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_helpers import (
    PASSWORD,
    Daemon,
    henbackupctl,
    locks,
    make_data,
    ok,
    read_state,
    restic_command,
    restic_json,
    tree,
    write_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ONE_RESTIC = pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)

HOST = "testhost"
DEADLINE = 30.0  # generous (a busy 2-core machine): waited for, never asserted as a duration
BIG = 4 << 20  # random, so incompressible: ~4 s of restic at the 1M upload limit


# --- set-up -------------------------------------------------------------------------------


def write_config(
    path: Path, restic: str, repository: Path, backups: dict[str, dict[str, Any]]
) -> Path:
    """One repository, `local`; these backups to it (each key a TOML value). Returns `path`."""
    lines = [
        "[daemon]",
        f"restic = {json.dumps(restic)}",
        f'hostname = "{HOST}"',
        "",
        "[repositories.local]",
        f"location = {json.dumps(str(repository))}",
        f"password = {json.dumps(PASSWORD)}",
    ]
    for name, settings in backups.items():
        lines += ["", f"[backups.{name}]", 'repositories = ["local"]']
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshots(restic: str, repository: Path) -> list[dict[str, Any]]:
    return restic_json(restic, repository, "snapshots")


def assert_repository_sound(restic: str, repository: Path, count: int) -> list[dict[str, Any]]:
    """No lock left, `restic check` clean, `count` snapshots, each of which loads (its tree
    lists); returns them, oldest first."""
    assert locks(restic, repository) == []
    check = restic_command(restic, repository, "check")
    assert b"no errors were found" in check.stdout, check.stdout
    found = snapshots(restic, repository)
    assert len(found) == count, found
    for snapshot in found:
        assert restic_command(restic, repository, "ls", snapshot["id"]).stdout
    return found


def assert_restores(restic: str, repository: Path, snapshot: str, data: Path, target: Path) -> None:
    """The snapshot brings `data` back byte for byte."""
    restic_command(restic, repository, "restore", snapshot, "--target", str(target))
    assert tree(target / data.relative_to(data.anchor)) == tree(data)


def seed(restic: str, repository: Path, tmp_path: Path) -> Path:
    """One snapshot taken before the daemon ever ran (it must never be lost); returns its data."""
    old = make_data(tmp_path / "old")
    restic_command(restic, repository, "backup", "--host", HOST, "--tag", "backup-old", str(old))
    return old


def restic_backup_of(root: int) -> psutil.Process:
    """The `restic backup` process among `root`'s descendants (waits for it)."""
    found: list[psutil.Process] = []

    def look() -> bool:
        with contextlib.suppress(psutil.Error):
            for process in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if process.name() == "restic" and "backup" in process.cmdline():
                        found.append(process)
        return bool(found)

    deadline = time.monotonic() + DEADLINE
    while not look():
        assert time.monotonic() < deadline, f"no restic backup under {root}"
        time.sleep(0.05)
    return found[0]


def wait_locked(daemon: Daemon, restic: str, repository: Path) -> None:
    """Until restic holds its lock in the repository: the backup is under way."""
    assert daemon.pump_until(lambda: locks(restic, repository) != [], DEADLINE), (
        "restic never locked the repository\n" + daemon.report()
    )


def clean_exit(daemon: Daemon) -> None:
    """Stop the daemon; it must exit 0, leave no process behind and print no traceback."""
    code = daemon.stop()
    assert code == 0, f"exit {code}\n{daemon.report()}"
    assert daemon.leftovers == []
    assert daemon.noise == [], daemon.report()


def fields(event: dict[str, Any], *names: str) -> dict[str, Any]:
    """HENBACKUP_<NAME> of `event` for each name, by name."""
    return {name: event.get(f"HENBACKUP_{name.upper()}") for name in names}


def workers(daemon: Daemon) -> list[psutil.Process]:
    """The master's live worker processes (`hb:NAME`), not counting zombies."""
    found = []
    for child in psutil.Process(daemon.pid).children():
        with contextlib.suppress(psutil.Error):
            if child.name().startswith("hb:") and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


def gone(processes: list[psutil.Process]) -> list[int]:
    """The pids of those of `processes` still alive after DEADLINE seconds (expected: none)."""
    _, alive = psutil.wait_procs(processes, timeout=DEADLINE)
    return [process.pid for process in alive]


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `mountpoint` for the test's duration."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def fill(directory: Path) -> None:
    """Write into `directory` until its filesystem has no byte left."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0


# --- kill -9 ------------------------------------------------------------------------------


@ONE_RESTIC
def test_master_killed_mid_backup_its_children_end_and_a_new_master_runs_the_backup(
    restic, repository, tmp_path
):
    """kill -9 of the master while restic backs up: the workers notice (the kernel's parent-
    death signal), stop their job, whose restic is interrupted and removes its lock; nothing
    is left running. A new master on the same directories starts cleanly (stale socket and
    queue files and all), runs the interrupted backup at once by itself (an interrupted run
    is no failure: no retry delay), and every snapshot is there and sound."""
    old = seed(restic, repository, tmp_path)
    pictures = make_data(tmp_path / "pictures", big=BIG)
    settings = {"paths": [str(pictures)], "schedule": ["1h"], "upload_limit": "1M"}
    config = write_config(tmp_path / "henbackup.toml", restic, repository, {"pictures": settings})
    base = tmp_path / "daemon"

    first = Daemon(config, base)
    with first:
        started = first.wait_for("job.started", timeout=DEADLINE, backup="pictures")
        assert started["HENBACKUP_TRIGGER"] == "startup"
        restic_process = restic_backup_of(first.pid)
        wait_locked(first, restic, repository)
        family = psutil.Process(first.pid).children(recursive=True)
        assert restic_process in family
        since = len(first.events)

        os.kill(first.pid, signal.SIGKILL)
        assert gone(family) == [], first.report()
        # Every process of the daemon closed its stderr: nothing of it is left anywhere.
        assert first.pump_until(lambda: first.eof, DEADLINE), first.report()
        assert first.find("job.succeeded") == [], first.report()
        ended = first.find(since=since, job=started["HENBACKUP_JOB"])
        assert [e["HENBACKUP_EVENT"] for e in ended][-1:] == ["job.cancelled"], first.report()
        assert first.noise == [], first.report()
    assert_repository_sound(restic, repository, count=1)  # the interrupted backup left none

    # What the killed run left in the state directory: an attempt, neither success nor failure.
    record = read_state(base / "state", "pictures")
    assert record["last_success"] is None and record["last_attempt"] > 0, record
    assert record.get("last_failure") is None, record

    second = Daemon(config, base)
    with second:
        fired = second.wait_for("trigger.fired", timeout=DEADLINE, backup="pictures")
        assert fields(fired, "trigger", "reason") == {
            "trigger": "startup",
            "reason": "every 1h, its last run was interrupted",
        }
        again = second.wait_for("job.started", timeout=DEADLINE, backup="pictures")
        done = second.wait_for("job.succeeded", timeout=60, job=again["HENBACKUP_JOB"])
        assert second.find("job.failed") == [], second.report()
        clean_exit(second)
    before, after = assert_repository_sound(restic, repository, count=2)
    assert (before["tags"], after["tags"]) == (["backup-old"], ["backup-pictures"])
    assert after["short_id"] == done["HENBACKUP_SNAPSHOT"][:8]
    assert_restores(restic, repository, before["id"], old, tmp_path / "old-restored")
    assert_restores(restic, repository, after["id"], pictures, tmp_path / "restored")


@ONE_RESTIC
def test_a_restarted_master_runs_the_backup_a_killed_master_interrupted(
    restic, repository, tmp_path
):
    """The run record exactly as the test above finds it after kill -9 of the master
    mid-backup (an attempt a few seconds ago, no success): the backup is due at start."""
    pictures = make_data(tmp_path / "pictures")
    settings = {"paths": [str(pictures)], "schedule": ["1h"]}
    config = write_config(tmp_path / "henbackup.toml", restic, repository, {"pictures": settings})
    base = tmp_path / "daemon"
    write_state(base / "state", "pictures", last_success=None, last_attempt=time.time() - 5)
    with Daemon(config, base) as daemon:
        started = daemon.wait_for("job.started", timeout=15, backup="pictures")
        assert started["HENBACKUP_TRIGGER"] == "startup"
        daemon.wait_for("job.succeeded", timeout=DEADLINE, job=started["HENBACKUP_JOB"])
        clean_exit(daemon)


def worker_started(daemon: Daemon, name: str, since: int = 0) -> int:
    """The pid of the worker of `name` started from event index `since` on."""
    event = daemon.wait_for("child.started", timeout=DEADLINE, since=since, child=name)
    return int(event["HENBACKUP_PID"])


@ONE_RESTIC
def test_a_worker_killed_is_restarted_with_a_growing_backoff(restic, repository, tmp_path):
    """kill -9 of an idle worker, twice in a row: each time the master says so (child.exited
    with the signal, the state and the delay), restarts it after 1 s then 2 s, and the
    restarted worker runs backups."""
    pictures = make_data(tmp_path / "pictures")
    config = write_config(
        tmp_path / "henbackup.toml", restic, repository, {"pictures": {"paths": [str(pictures)]}}
    )
    with Daemon(config, tmp_path / "daemon") as daemon:
        pid = worker_started(daemon, "pictures")
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        for delay in ("1s", "2s"):
            since = len(daemon.events)
            os.kill(pid, signal.SIGKILL)
            exited = daemon.wait_for("child.exited", timeout=DEADLINE, since=since, pid=str(pid))
            assert fields(exited, "child", "child_kind", "backup", "exit_status", "state") == {
                "child": "pictures",
                "child_kind": "backup",
                "backup": "pictures",
                "exit_status": "-9",
                "state": "backoff",
            }
            assert exited["MESSAGE"] == (
                f"worker pictures (pid {pid}) was killed by SIGKILL; restarting in {delay}"
            )
            pid = worker_started(daemon, "pictures", since=daemon.events.index(exited))
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        assert [p.pid for p in workers(daemon)] == [pid]
        ok(henbackupctl(daemon, "backup", "pictures"))
        done = daemon.wait_for("job.succeeded", timeout=DEADLINE, backup="pictures")
        clean_exit(daemon)
    (snapshot,) = assert_repository_sound(restic, repository, count=1)
    assert snapshot["short_id"] == done["HENBACKUP_SNAPSHOT"][:8]


def kill_job_mid_backup(
    daemon: Daemon, restic: str, repository: Path
) -> tuple[dict[str, Any], psutil.Process]:
    """Ask a backup of pictures, kill -9 its job process once restic holds its lock; returns
    the job's job.failed event and the (by then ended) restic process."""
    worker = worker_started(daemon, "pictures")
    daemon.wait_worker("pictures", lambda w: w["state"] == "running")
    ok(henbackupctl(daemon, "backup", "pictures", "--no-wait"))
    started = daemon.wait_for("job.started", timeout=DEADLINE, backup="pictures")
    restic_process = restic_backup_of(daemon.pid)
    job_process = psutil.Process(restic_process.ppid())
    assert job_process.ppid() == worker
    wait_locked(daemon, restic, repository)
    job_process.kill()
    failed = daemon.wait_for("job.failed", timeout=DEADLINE, job=started["HENBACKUP_JOB"])
    assert gone([restic_process]) == []
    return failed, restic_process


def job_killing_daemon(tmp_path: Path, restic: str, repository: Path) -> tuple[Daemon, Path]:
    pictures = make_data(tmp_path / "pictures", big=BIG)
    settings = {"paths": [str(pictures)], "upload_limit": "1M"}
    config = write_config(tmp_path / "henbackup.toml", restic, repository, {"pictures": settings})
    return Daemon(config, tmp_path / "daemon"), pictures


@ONE_RESTIC
def test_a_job_process_killed_frees_its_slot_and_the_next_run_works(restic, repository, tmp_path):
    """kill -9 of the job process while its restic backs up: the master reports job.failed
    naming the signal, the queue is empty, the worker lives on, the next run of the same
    backup succeeds; a check through the daemon clears whatever lock restic left."""
    daemon, pictures = job_killing_daemon(tmp_path, restic, repository)
    with daemon:
        failed, _ = kill_job_mid_backup(daemon, restic, repository)
        assert fields(failed, "backup", "repository", "operation", "error") == {
            "backup": "pictures",
            "repository": "local",
            "operation": "backup",
            "error": "its process was killed by SIGKILL before the job ended",
        }
        assert json.loads(ok(henbackupctl(daemon, "--json", "queue")))["jobs"] == []
        assert len(workers(daemon)) == 1  # the worker lives on
        since = len(daemon.events)
        ok(henbackupctl(daemon, "backup", "pictures"))
        done = daemon.wait_for("job.succeeded", timeout=DEADLINE, since=since, backup="pictures")
        ok(henbackupctl(daemon, "check", "local"))
        assert len(daemon.find("job.failed")) == 1, daemon.report()
        clean_exit(daemon)
    (snapshot,) = assert_repository_sound(restic, repository, count=1)
    assert snapshot["short_id"] == done["HENBACKUP_SNAPSHOT"][:8]
    assert_restores(restic, repository, snapshot["id"], pictures, tmp_path / "restored")


@ONE_RESTIC
def test_a_stopped_worker_is_found_hung_and_replaced(restic, repository, tmp_path):
    """SIGSTOP of a worker: its heartbeats stop, the master kills it after the hang timeout
    (shortened to 3 s through HENBACKUP_HANG_TIMEOUT), says so, and starts a new one that
    runs backups."""
    pictures = make_data(tmp_path / "pictures")
    config = write_config(
        tmp_path / "henbackup.toml", restic, repository, {"pictures": {"paths": [str(pictures)]}}
    )
    daemon = Daemon(config, tmp_path / "daemon", env={"HENBACKUP_HANG_TIMEOUT": "3"})
    with daemon:
        pid = worker_started(daemon, "pictures")
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        stopped = psutil.Process(pid)
        since = len(daemon.events)
        stopped.suspend()
        exited = daemon.wait_for("child.exited", timeout=DEADLINE, since=since, pid=str(pid))
        assert fields(exited, "child", "exit_status", "state") == {
            "child": "pictures",
            "exit_status": "-9",
            "state": "backoff",
        }
        assert (
            exited["MESSAGE"]
            == f"worker pictures (pid {pid}) hung and was killed; restarting in 1s"
        )
        assert gone([stopped]) == []
        new = worker_started(daemon, "pictures", since=daemon.events.index(exited))
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        assert [p.pid for p in workers(daemon)] == [new]
        ok(henbackupctl(daemon, "backup", "pictures"))
        daemon.wait_for("job.succeeded", timeout=DEADLINE, backup="pictures")
        clean_exit(daemon)
    assert_repository_sound(restic, repository, count=1)


# --- full filesystems ----------------------------------------------------------------------


def test_a_full_repository_fails_the_backup_in_one_line_and_the_next_one_succeeds(
    restic, repository, tmp_path
):
    """The repository on a 2 MiB tmpfs and 4 MiB of random data: the backup fails, with a
    one-line reason saying the disk is full; the daemon lives on. Once the filesystem is
    grown (space freed), the next backup succeeds, the repository checks clean and the data
    restores byte for byte."""
    pictures = make_data(tmp_path / "pictures", big=BIG)
    with tmpfs(tmp_path / "disk", "2M") as disk:
        small = disk / "repository"
        subprocess.run(["cp", "-a", str(repository), str(small)], check=True)
        settings = {"paths": [str(pictures)]}
        config = write_config(tmp_path / "henbackup.toml", restic, small, {"pictures": settings})
        with Daemon(config, tmp_path / "daemon") as daemon:
            daemon.wait_worker("pictures", lambda w: w["state"] == "running")
            full = henbackupctl(daemon, "backup", "pictures")
            assert full.returncode == 1, full
            failed = daemon.wait_for("job.failed", timeout=DEADLINE, backup="pictures")
            reason = failed["HENBACKUP_ERROR"]
            assert "\n" not in reason and "no space left on device" in reason.lower(), reason
            assert daemon.worker("pictures") is not None  # it answers
            assert len(workers(daemon)) == 1

            subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)
            since = len(daemon.events)
            ok(henbackupctl(daemon, "backup", "pictures"))
            done = daemon.wait_for("job.succeeded", timeout=DEADLINE, since=since)
            clean_exit(daemon)
        (snapshot,) = assert_repository_sound(restic, small, count=1)
        assert snapshot["short_id"] == done["HENBACKUP_SNAPSHOT"][:8]
        assert_restores(restic, small, snapshot["id"], pictures, tmp_path / "restored")


@ONE_RESTIC
def test_backups_go_on_with_the_state_directory_full(restic, repository, tmp_path):
    """$STATE_DIRECTORY on a full tmpfs: the run records cannot be written, backups still
    happen (the one due at start, and one asked by hand) and the daemon lives on."""
    pictures = make_data(tmp_path / "pictures")
    settings = {"paths": [str(pictures)], "schedule": ["1h"]}
    config = write_config(tmp_path / "henbackup.toml", restic, repository, {"pictures": settings})
    base = tmp_path / "daemon"
    with tmpfs(base / "state", "256K") as state:
        fill(state)
        with Daemon(config, base) as daemon:
            daemon.wait_for("job.succeeded", timeout=20, backup="pictures")
            since = len(daemon.events)
            ok(henbackupctl(daemon, "backup", "pictures"))
            daemon.wait_for("job.succeeded", timeout=DEADLINE, since=since, backup="pictures")
            assert daemon.find("job.failed") == [], daemon.report()
            assert len(workers(daemon)) == 1
            clean_exit(daemon)
    assert_repository_sound(restic, repository, count=2)


# --- reload storms -------------------------------------------------------------------------


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, as an editor or a config manager does."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def descendants(daemon: Daemon) -> list[str]:
    """The names of the master's live descendants, sorted."""
    names = []
    for process in psutil.Process(daemon.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE:
                names.append(process.name())
    return sorted(names)


@ONE_RESTIC
def test_a_storm_of_reloads_during_a_backup(restic, repository, tmp_path):
    """50 SIGHUPs in a burst while a backup runs, the config alternating between valid ones
    (each with another extra backup: workers come and go) and invalid ones. The daemon
    answers throughout, the running backup is not interrupted (its definition never
    changes) and succeeds, the config loaded last is the one that runs, and exactly its
    workers are alive: none leaked."""
    pictures = make_data(tmp_path / "pictures", big=BIG)
    extra = make_data(tmp_path / "extra")
    path = tmp_path / "henbackup.toml"
    steady = {"pictures": {"paths": [str(pictures)], "upload_limit": "1M"}}

    def valid(name: str) -> str:
        write_config(path, restic, repository, {**steady, name: {"paths": [str(extra)]}})
        return path.read_text()

    def invalid(key: str) -> str:
        return valid("extra") + f"\n[daemon.{key}]\n"

    replace_file(path, valid("extra"))
    with Daemon(path, tmp_path / "daemon") as daemon:
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        ok(henbackupctl(daemon, "backup", "pictures", "--no-wait"))
        started = daemon.wait_for("job.started", timeout=DEADLINE, backup="pictures")
        wait_locked(daemon, restic, repository)

        since = len(daemon.events)
        for number in range(50):
            text = valid(f"extra{number}") if number % 2 == 0 else invalid(f"storm{number}")
            replace_file(path, text)
            os.kill(daemon.pid, signal.SIGHUP)
            assert daemon.status()["ok"] is True  # it answers (Unreachable says why not)
        # The last word, loaded for sure: a valid config, then an invalid one.
        replace_file(path, valid("final"))
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_for("config.reloaded", timeout=DEADLINE, since=since, added="backup:final")
        replace_file(path, invalid("storm_end"))
        os.kill(daemon.pid, signal.SIGHUP)
        assert daemon.pump_until(
            lambda: any("storm_end" in e["HENBACKUP_ERROR"] for e in daemon.find("config.invalid")),
            DEADLINE,
        ), daemon.report()

        done = daemon.wait_for("job.succeeded", timeout=60, job=started["HENBACKUP_JOB"])
        storm = daemon.events[since:]
        assert [e for e in storm if e["HENBACKUP_EVENT"] in ("job.cancelled", "job.failed")] == []
        assert daemon.find("config.invalid", since=since), daemon.report()
        status = daemon.status()
        assert sorted(b["name"] for b in status["backups"]) == ["final", "pictures"]
        assert daemon.pump_until(
            lambda: descendants(daemon) == ["hb:final", "hb:pictures"], DEADLINE
        ), descendants(daemon)
        started_workers = len(daemon.find("child.started"))
        assert started_workers - len(daemon.find("child.exited")) == 2, daemon.report()
        clean_exit(daemon)
    (snapshot,) = assert_repository_sound(restic, repository, count=1)
    assert snapshot["short_id"] == done["HENBACKUP_SNAPSHOT"][:8]


# --- corrupt and unwritable state ------------------------------------------------------------


@ONE_RESTIC
def test_backups_go_on_with_a_read_only_cache_directory(restic, repository, tmp_path):
    """$CACHE_DIRECTORY on a read-only filesystem (restic cannot keep its cache): backups
    still succeed and the repository stays sound."""
    pictures = make_data(tmp_path / "pictures")
    config = write_config(
        tmp_path / "henbackup.toml", restic, repository, {"pictures": {"paths": [str(pictures)]}}
    )
    base = tmp_path / "daemon"
    with tmpfs(base / "cache", "1M") as cache:
        subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
        with Daemon(config, base) as daemon:
            daemon.wait_worker("pictures", lambda w: w["state"] == "running")
            for _ in range(2):
                since = len(daemon.events)
                ok(henbackupctl(daemon, "backup", "pictures"))
                daemon.wait_for("job.succeeded", timeout=DEADLINE, since=since)
            assert daemon.find("job.failed") == [], daemon.report()
            clean_exit(daemon)
        assert list(cache.iterdir()) == []
    (_, snapshot) = assert_repository_sound(restic, repository, count=2)
    assert_restores(restic, repository, snapshot["id"], pictures, tmp_path / "restored")


def ticket(job_id: str, pid: int, **changes: Any) -> bytes:
    """A ticket file as the queue writes it (scheduler/ticket.py), with `changes`."""
    data = {
        "job_id": job_id,
        "repository": "local",
        "priority": [0, 0],
        "mode": "shared",
        "operation": "backup",
        "backup": "pictures",
        "pid": pid,
        "start_time": 1,
        "sequence": 1,
        "state": "running",
        "slot": 1,
        "queued_at": 0.0,
    }
    return json.dumps({**data, **changes}).encode()


GARBAGE = {
    "random": os.urandom(200),
    "empty": b"",
    "torn": ticket("torn", 1)[:40],
    "list": b"[1, 2, 3]",
    "no-priority": b'{"job_id": "no-priority", "repository": "local"}',
    "bad-priority": ticket("bad-priority", 1, priority="high"),
    "dead-owner": ticket("dead-owner", 0x3FFFFFFF),  # beyond pid_max: nobody
    "dead-waiter": ticket("dead-waiter", 0x3FFFFFFF, state="waiting", slot=None),
}


@ONE_RESTIC
def test_garbage_ticket_files_in_the_runtime_directory_stop_nothing(restic, repository, tmp_path):
    """$RUNTIME_DIRECTORY/scheduler/tickets holding garbage (random bytes, empty and torn
    files, JSON of another shape, tickets of owners long dead, one of them `running` in the
    only slot) and a garbled arrival counter: backups run, the queue shows none of it, and
    the tickets are cleared away."""
    pictures = make_data(tmp_path / "pictures")
    config = write_config(
        tmp_path / "henbackup.toml", restic, repository, {"pictures": {"paths": [str(pictures)]}}
    )
    base = tmp_path / "daemon"
    tickets = base / "run" / "scheduler" / "tickets"
    tickets.mkdir(parents=True)
    for name, content in GARBAGE.items():
        (tickets / name).write_bytes(content)
    (tickets.parent / "sequence").write_bytes(b"\xff garbage")  # the last arrival number
    with Daemon(config, base) as daemon:
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        assert json.loads(ok(henbackupctl(daemon, "--json", "queue")))["jobs"] == []
        ok(henbackupctl(daemon, "backup", "pictures"))
        daemon.wait_for("job.succeeded", timeout=DEADLINE, backup="pictures")
        assert sorted(os.listdir(tickets)) == []
        assert daemon.find("job.failed") == [], daemon.report()
        clean_exit(daemon)
    assert_repository_sound(restic, repository, count=1)


@ONE_RESTIC
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_ticket_that_is_not_a_file_stops_nothing(restic, repository, tmp_path, kind):
    """A directory or a FIFO among the tickets (garbage of another kind): the daemon starts
    and backs up (the entry is ignored or removed)."""
    pictures = make_data(tmp_path / "pictures")
    config = write_config(
        tmp_path / "henbackup.toml", restic, repository, {"pictures": {"paths": [str(pictures)]}}
    )
    base = tmp_path / "daemon"
    tickets = base / "run" / "scheduler" / "tickets"
    tickets.mkdir(parents=True)
    if kind == "directory":
        (tickets / "junk").mkdir()
    else:
        os.mkfifo(tickets / "junk")
    daemon = Daemon(config, base).start()
    try:
        daemon.wait_for("daemon.started", timeout=10)
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        ok(henbackupctl(daemon, "backup", "pictures"))
        daemon.wait_for("job.succeeded", timeout=DEADLINE, backup="pictures")
        clean_exit(daemon)
    finally:
        daemon.stop(timeout=3)  # a master stuck in open() never hears SIGTERM: killed
