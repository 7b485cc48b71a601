"""The metrics textfile follows a job's stall: written when the stall begins and when it ends,
not at every progress report in between."""

from __future__ import annotations

from pathlib import Path

from henbackup.channel import JobEvent
from henbackup.config.model import Metrics
from henbackup.loop import Loop
from henbackup.master.jobs import Jobs

JOB = {"job": "j1", "operation": "backup", "backup": "pictures", "repository": "aws"}
STALLED = 'henbackup_job_stalled{backup="pictures",repository="aws",operation="backup"}'


def test_the_textfile_says_when_a_job_stalls_and_when_it_moves_again(tmp_path: Path) -> None:
    textfile = tmp_path / "henbackup.prom"
    loop = Loop()
    try:
        jobs = Jobs(loop, emit=lambda *args, **fields: None)
        jobs.configure(Metrics(textfile=textfile))

        def send(kind: str, **fields: object) -> str:
            """The textfile after the event ("" when it was not written again)."""
            jobs.event("backup:pictures", JobEvent(kind, kind, {**JOB, **fields}))
            return textfile.read_text() if textfile.exists() else ""

        assert f"{STALLED} 0\n" in send("job.started")
        send("job.progress", bytes_done=4096)
        assert f"{STALLED} 1\n" in send("job.stalled", stalled_sec=60.0)
        textfile.unlink()
        assert send("job.progress", bytes_done=4096) == ""  # still stalled: not rewritten
        assert f"{STALLED} 0\n" in send("job.progress", bytes_done=8192)
    finally:
        loop.close()


def test_a_textfile_that_cannot_be_written_is_said_once_until_it_can(tmp_path: Path) -> None:
    textfile = tmp_path / "henbackup.prom"
    textfile.mkdir()  # in the way, as a full disk would be: every write fails
    said: list[str] = []
    loop = Loop()
    try:
        jobs = Jobs(loop, emit=lambda kind, message, **fields: said.append(kind))
        jobs.configure(Metrics(textfile=textfile))
        for kind in ("job.queued", "job.started", "job.succeeded"):
            jobs.event("backup:pictures", JobEvent(kind, kind, JOB))
        assert said == ["metrics.failed"]
        textfile.rmdir()
        jobs.write_metrics()
        assert textfile.is_file()
        textfile.unlink()
        textfile.mkdir()
        jobs.write_metrics()  # failing again: said again
        assert said == ["metrics.failed", "metrics.failed"]
    finally:
        loop.close()
