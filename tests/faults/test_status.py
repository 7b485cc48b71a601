"""What `henbackupctl status` says of a run that makes no progress, through the real daemon.

A real REST backend (`rclone serve restic` on 127.0.0.1) is frozen mid-backup (SIGSTOP):
restic waits, the job says job.stalled, and the status line says "(stalled)" by the run
(until restic reports progress again: unit-tested in tests/unit/observe/test_status.py,
as restic that has read all its files ahead reports none until its end).
"""

from __future__ import annotations

import json
from pathlib import Path

from integration import backends
from integration.backends import RestServer
from integration.daemon_helpers import Daemon, henbackupctl

from faults.test_stall import ONE_RESTIC, make_source, start_backup_and_wait_progress, write_config

rest_repository = backends.rest_repository  # the fixture

DEADLINE = 60.0  # generous: a busy 2-core machine; never asserted on, only waited for


def status(daemon: Daemon) -> dict:
    call = henbackupctl(daemon, "--json", "status")
    assert call.returncode == 0, (call.stdout, call.stderr, daemon.report())
    return json.loads(call.stdout)


@ONE_RESTIC
def test_a_stalled_run_shows_in_the_status_line(
    restic: str, rest_repository: RestServer, tmp_path: Path
) -> None:
    source = make_source(tmp_path / "source", size=16 << 20)  # ~32 s at 512K/s: still running
    config = write_config(tmp_path, restic, rest_repository, source, "30s")  # warned at 15 s
    with Daemon(config, tmp_path / "daemon") as daemon:
        job = start_backup_and_wait_progress(daemon)
        rest_repository.freeze()
        try:
            daemon.wait_for("job.stalled", timeout=DEADLINE, job=job)
            frozen = status(daemon)
        finally:
            rest_repository.thaw()
        assert "; running: pictures→rest " in frozen["status"], frozen
        assert frozen["status"].split("; ")[1].endswith("% (stalled)"), frozen
        (row,) = frozen["backups"][0]["repositories"]
        assert (row["state"], row["job"]) == ("running", job)

        call = henbackupctl(daemon, "cancel", job)
        assert call.returncode == 0, call.stderr
        daemon.wait_for("job.cancelled", timeout=DEADLINE, job=job)
