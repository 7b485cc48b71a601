"""Nothing hangs for ever: a job whose restic makes no progress is reported, then ended.

Real restic (both versions: how they retry and clean up differs), a real REST backend
(`rclone serve restic` on 127.0.0.1, see integration/backends.py) that the tests freeze
(SIGSTOP), kill, or kill and start again. The job layer runs in the test's process where
no daemon is needed (the events are the job's own); the daemon runs where the slot, the
queue or `henbackupctl cancel` are the subject.

Every fault strikes mid-backup: at the first progress report with bytes done, while an
upload limit keeps the backup going for several more seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration import backends
from integration.backends import RestServer
from integration.daemon_helpers import PASSWORD, Daemon, henbackupctl, restic_command

from henbackup.config.model import PasswordSource
from henbackup.engine.base import BackupRequest, Target, TransferProgress
from henbackup.engine.restic import UNLOCK_LIMIT, ResticEngine
from henbackup.engine.run import INTERRUPT_GRACE
from henbackup.errors import EngineError, JobCancelled, Stalled
from henbackup.jobs.job import Job, run_job
from henbackup.observe.events import EmitFunction

pytestmark = pytest.mark.integration
rest_repository = backends.rest_repository  # the fixture

ONE_RESTIC = pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)
LIMIT = 512 << 10  # upload bytes/s: the backup below lasts ~8 s, time to freeze its backend
ENDING = INTERRUPT_GRACE + UNLOCK_LIMIT  # the most that ending restic may take
SLACK = 15.0  # a busy 2-core machine


def make_source(directory: Path, size: int = 4 << 20) -> Path:
    directory.mkdir()
    (directory / "big.bin").write_bytes(os.urandom(size))
    (directory / "notes.txt").write_text("hello\n")
    return directory


def kinds(events: EmitFunction) -> list[str]:
    return [e.kind for e in events.recorded]  # type: ignore[attr-defined]


def fields(events: EmitFunction, kind: str) -> list[dict[str, str]]:
    return [dict(e.fields) for e in events.recorded if e.kind == kind]  # type: ignore[attr-defined]


def backup_job(
    restic: str,
    server: RestServer,
    source: Path,
    events: EmitFunction,
    stall_timeout: float,
    fault: Callable[[int], None],
) -> tuple[float | None, Exception | None]:
    """Back up `source` to the server as one job; `fault(restic_pid)` runs at the first
    progress with bytes done. Returns when the fault struck (monotonic) and what the job
    raised."""
    pids: list[int] = []
    engine = ResticEngine(
        restic, cache_dir=source.parent / "cache", on_spawn=pids.append, stall_timeout=stall_timeout
    )
    target = Target(
        "rest", server.location, PasswordSource("password", PASSWORD), upload_limit=LIMIT
    )
    request = BackupRequest("pictures", (str(source),), host="testhost")
    struck: list[float] = []

    def progress(report: TransferProgress) -> None:
        if not struck and report.bytes_done > 0:
            struck.append(time.monotonic())
            fault(pids[-1])

    job = Job("backup", "rest", "pictures")
    try:
        run_job(job, events, lambda: engine.backup(target, request, progress), engine=engine)
    except EngineError as error:
        return (struck or [None])[0], error
    return (struck or [None])[0], None


def locks(restic: str, directory: Path) -> list[str]:
    """The lock files in the served repository directory."""
    return sorted(p.name for p in (directory / "locks").iterdir())


def test_a_backend_gone_for_good_ends_the_job_quoting_restic_not_a_retry(
    restic: str, rest_repository: RestServer, tmp_path: Path, events: EmitFunction
) -> None:
    """The job reports the stall, then fails within stall_timeout (+ ending restic) with
    one line quoting the cause restic gives, not its "retrying" line."""
    source = make_source(tmp_path / "source")
    struck, error = backup_job(
        restic, rest_repository, source, events, 3.0, lambda _: rest_repository.kill()
    )
    ended = time.monotonic()
    assert struck is not None, "the backup never reported progress"
    assert error is not None, "the backup succeeded without its backend"
    assert ended - struck < 3.0 + ENDING + SLACK
    assert kinds(events) == ["job.started", "job.stalled", "job.failed"]
    (stalled,) = fields(events, "job.stalled")
    (failed,) = fields(events, "job.failed")
    assert float(stalled["HENBACKUP_STALLED_SEC"]) >= 1.5
    reason = failed["HENBACKUP_ERROR"]
    assert reason == str(error) and type(error) is Stalled
    assert reason.startswith("no progress for 3s: "), reason
    for said in (reason, stalled["HENBACKUP_ERROR"]):
        assert said.endswith("connect: connection refused"), said
        assert "retrying" not in said and "\n" not in said
        assert f"http://127.0.0.1:{rest_repository.port}" not in said  # the location is hidden


def test_a_short_outage_within_stall_timeout_is_ridden_out(
    restic: str, rest_repository: RestServer, tmp_path: Path, events: EmitFunction
) -> None:
    """The backend is away 15 s (killed, then started again on the same port): with a
    stall_timeout longer than that, the backup succeeds; the stall may be reported."""
    source = make_source(tmp_path / "source")

    def outage(_: int) -> None:
        rest_repository.kill()
        rest_repository.start(after=15)

    struck, error = backup_job(restic, rest_repository, source, events, 40.0, outage)
    assert struck is not None and error is None, error
    assert [kind for kind in kinds(events) if kind != "job.stalled"] == [
        "job.started",
        "job.succeeded",
    ]
    snapshots = json.loads(
        restic_command(restic, rest_repository.directory, "snapshots", "--json").stdout
    )
    assert [s["paths"] for s in snapshots] == [[str(source)]]
    assert locks(restic, rest_repository.directory) == []


@ONE_RESTIC
def test_a_stopped_restic_is_a_stall_and_is_ended_cleanly(
    restic: str, rest_repository: RestServer, tmp_path: Path, events: EmitFunction
) -> None:
    """SIGSTOP of restic itself: stalled, ended (it gets SIGCONT with its SIGINT, so it
    removes its own lock), and the reason says that restic is stopped."""
    source = make_source(tmp_path / "source")
    _, error = backup_job(
        restic, rest_repository, source, events, 3.0, lambda pid: os.kill(pid, signal.SIGSTOP)
    )
    assert str(error) == "no progress for 3s: restic is stopped (SIGSTOP or a debugger)"
    (stalled,) = fields(events, "job.stalled")
    assert stalled["HENBACKUP_ERROR"] == "restic is stopped (SIGSTOP or a debugger)"
    assert locks(restic, rest_repository.directory) == []


# --- through the daemon: the slot, the queue, henbackupctl cancel ---------------------------


def write_config(tmp_path: Path, restic: str, server: RestServer, source: Path, stall: str) -> Path:
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"[daemon]\nrestic = {json.dumps(restic)}\nhostname = 'testhost'\n"
        f"stall_timeout = {json.dumps(stall)}\n\n"
        f"[repositories.rest]\nlocation = {json.dumps(server.location)}\n"
        f"password = {json.dumps(PASSWORD)}\nupload_limit = '{LIMIT >> 10}K'\n\n"
        f"[backups.pictures]\npaths = [{json.dumps(str(source))}]\nrepositories = ['rest']\n"
    )
    return config


def start_backup_and_wait_progress(daemon: Daemon) -> str:
    """`henbackupctl backup pictures --no-wait`; returns the job id once it moves bytes."""
    daemon.wait_for("daemon.started")
    call = henbackupctl(daemon, "backup", "pictures", "--no-wait")
    assert call.returncode == 0, call.stderr
    job = daemon.wait_for("job.started", backup="pictures")["HENBACKUP_JOB"]
    daemon.pump_until(
        lambda: any(int(e.get("HENBACKUP_BYTES_DONE") or 0) for e in daemon.find("job.progress")),
        60,
    )
    assert daemon.find("job.progress"), daemon.report()
    return job


def test_a_frozen_backend_is_reported_then_the_job_ends_and_frees_its_slot(
    restic: str, rest_repository: RestServer, tmp_path: Path
) -> None:
    """The server is frozen mid-backup: job.stalled, then job.failed with the no-progress
    reason after stall_timeout; once the server answers again, the next run of the
    backup gets the slot, removes the lock the ended restic left, and succeeds, and the
    repository checks clean."""
    source = make_source(tmp_path / "source")
    config = write_config(tmp_path, restic, rest_repository, source, "3s")
    with Daemon(config, tmp_path / "daemon") as daemon:
        job = start_backup_and_wait_progress(daemon)
        rest_repository.freeze()
        frozen = time.monotonic()
        stalled = daemon.wait_for("job.stalled", timeout=60, job=job)
        failed = daemon.wait_for("job.failed", timeout=60, job=job)
        took = time.monotonic() - frozen
        rest_repository.thaw()

        assert stalled["PRIORITY"] == "4"  # warning
        assert re.fullmatch(
            r"pictures→rest: backup has made no progress for \d+s: .+", stalled["MESSAGE"]
        ), stalled["MESSAGE"]
        assert failed["HENBACKUP_ERROR"].startswith("no progress for 3s: "), failed
        # the socket buffers take a few more seconds of data before restic stops moving
        assert took < 3.0 + ENDING + SLACK, daemon.report()

        call = henbackupctl(daemon, "backup", "pictures")
        assert call.returncode == 0, (call.stdout, call.stderr, daemon.report())
        daemon.wait_for("job.succeeded", backup="pictures")
    assert locks(restic, rest_repository.directory) == []
    restic_command(restic, rest_repository.directory, "check")


@ONE_RESTIC
def test_cancel_takes_effect_within_seconds_with_a_frozen_backend(
    restic: str, rest_repository: RestServer, tmp_path: Path
) -> None:
    """henbackupctl cancel of a job whose backend does not answer: restic gets SIGINT, then
    SIGKILL after a short grace, and the unlock after it is bounded too."""
    source = make_source(tmp_path / "source")
    config = write_config(tmp_path, restic, rest_repository, source, "10m")
    with Daemon(config, tmp_path / "daemon") as daemon:
        job = start_backup_and_wait_progress(daemon)
        rest_repository.freeze()
        time.sleep(1.0)  # restic is now waiting for the frozen server
        asked = time.monotonic()
        call = henbackupctl(daemon, "cancel", job)
        assert call.returncode == 0, call.stderr
        daemon.wait_for("job.cancelled", timeout=ENDING + SLACK, job=job)
        took = time.monotonic() - asked
        rest_repository.thaw()
    assert took < ENDING + SLACK
    assert not [e for e in daemon.events if e.get("HENBACKUP_EVENT") == "job.failed"]


@ONE_RESTIC
def test_a_cancel_is_acted_on_while_restic_says_nothing(
    restic: str, rest_repository: RestServer, tmp_path: Path, events: EmitFunction
) -> None:
    """The checkpoint (where a recorded `henbackupctl cancel` is raised) runs at least every
    second, not only when restic prints: a stopped restic prints nothing at all."""
    source = make_source(tmp_path / "source")
    asked: list[float] = []

    def checkpoint() -> None:
        if asked and len(asked) == 1:
            asked.append(time.monotonic())
            raise JobCancelled("job cancelled by henbackupctl cancel")

    pids: list[int] = []
    engine = ResticEngine(
        restic, cache_dir=tmp_path / "cache", on_spawn=pids.append, checkpoint=checkpoint
    )
    password = PasswordSource("password", PASSWORD)
    target = Target("rest", rest_repository.location, password, upload_limit=LIMIT)
    request = BackupRequest("pictures", (str(source),), host="testhost")

    def progress(report: TransferProgress) -> None:
        if not asked and report.bytes_done > 0:
            os.kill(pids[-1], signal.SIGSTOP)
            asked.append(time.monotonic())

    with pytest.raises(JobCancelled):
        engine.backup(target, request, progress)
    assert len(asked) == 2 and asked[1] - asked[0] < 5.0, asked
    assert locks(restic, rest_repository.directory) == []
