"""Issue 18's scale check, through the real daemon: 200 watched backups fall due at once
(never run, `schedule = ["1d"]`: each runs at start), with real restic on one local
repository and two slots.

A waiting run is a ticket in its worker's loop, not a process: while they wait, there are
never more job processes than the slots can hold (one per granted slot, plus one finishing
after it gave its slot back) and no job process holds an inotify instance. Every watch is
the watcher's, on the daemon's one inotify instance (fs.inotify.max_user_instances is 128
per user by default: an instance per watched worker ran out at about 120). So every
backup's watch stays set up, every run completes and none dies.

The instances are counted per process (/proc/PID/fd), the watches read from the kernel
(/proc/PID/fdinfo), not by lowering the host's limits: the machine's other users keep theirs.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import psutil
import pytest
from daemon_helpers import PASSWORD, Daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKUPS = 200
WATCHED = BACKUPS
SLOTS = 2
DEADLINE = 1800.0  # 200 restic backups on a busy 2-core machine; waited for, never asserted


def write_config(tmp_path: Path, restic: str, repository: Path) -> Path:
    lines = [
        "[daemon]",
        f"restic = {json.dumps(restic)}",
        'hostname = "testhost"',
        f"max_concurrent_jobs = {SLOTS}",
        "",
        "[repositories.local]",
        f"location = {json.dumps(str(repository))}",
        f"password = {json.dumps(PASSWORD)}",
    ]
    for n in range(BACKUPS):
        data = tmp_path / "data" / f"b{n}"
        data.mkdir(parents=True)
        (data / "file").write_text(f"backup {n}\n")
        lines += ["", f"[backups.b{n}]", f"paths = [{json.dumps(str(data))}]"]
        lines += ['repositories = ["local"]', 'schedule = ["1d"]']
        if n < WATCHED:
            lines += ['watch = { wait_min = "1h", wait_max = "2h" }']
    config = tmp_path / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    return config


def inotify_instances(pid: int) -> int:
    """The inotify instances process `pid` holds (0 if it is gone)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
    return count


class Census:
    """The daemon's processes, counted again at each look."""

    def __init__(self) -> None:
        self.peak_job_processes = 0
        self.job_process_instances = 0
        self.peak_instances = 0
        self.paths: set[int] = set()  # the inodes of the watched backups' paths
        self.watched: set[int] = set()  # the inodes the watcher watches, at the end

    def look(self, daemon: Daemon) -> None:
        jobs, instances = 0, 0
        for process in daemon._descendants():
            with contextlib.suppress(psutil.Error):
                held = inotify_instances(process.pid)
                instances += held
                if process.name().startswith("hbjob:"):
                    jobs += 1
                    self.job_process_instances = max(self.job_process_instances, held)
        self.peak_job_processes = max(self.peak_job_processes, jobs)
        self.peak_instances = max(self.peak_instances, instances + inotify_instances(daemon.pid))


@pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)
def test_200_backups_due_at_once_wait_as_tickets_and_all_complete(restic, repository, tmp_path):
    daemon = Daemon(write_config(tmp_path, restic, repository), tmp_path)
    census = Census()
    census.paths = {os.stat(tmp_path / "data" / f"b{n}").st_ino for n in range(WATCHED)}
    with daemon:

        def all_done() -> bool:  # or failing already: then the asserts below say how
            census.look(daemon)
            failing = census.peak_job_processes > 2 * SLOTS or daemon.find("job.failed")
            done = len(daemon.find("job.succeeded", operation="backup")) == BACKUPS
            return done or bool(failing) or daemon.eof

        assert daemon.pump_until(all_done, DEADLINE, step=0.5), daemon.report()[-4000:]
        # Waiting runs were tickets: one job process per slot, and one finishing beside it.
        assert census.peak_job_processes <= 2 * SLOTS, census.peak_job_processes
        assert daemon.find("job.failed") == [], daemon.report()[-4000:]
        census.watched = daemon.watched_inodes()  # every watch is still there at the end
        code = daemon.stop(timeout=120)
        assert code == 0, daemon.report()[-4000:]
    succeeded = {e["HENBACKUP_BACKUP"] for e in daemon.find("job.succeeded")}
    assert succeeded == {f"b{n}" for n in range(BACKUPS)}
    assert daemon.find("watch.limit") == [], daemon.report()[-4000:]
    assert [e for e in daemon.find("child.exited") if "exited with 0" not in e["MESSAGE"]] == []
    assert daemon.noise == [], "\n".join(daemon.noise[-40:])
    assert census.job_process_instances == 0
    assert census.peak_instances == 1  # the watcher's, for every backup
    assert census.watched >= census.paths, "a backup's path was not watched"
