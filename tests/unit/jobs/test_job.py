import os

import pytest

from henbackup.config.model import Priority
from henbackup.errors import JobCancelled, WrongPassword
from henbackup.jobs.job import Job, run_job


class Recorder:
    """Collects emitted events as (kind, fields) pairs."""

    def __init__(self):
        self.events = []

    def __call__(self, kind, message, **fields):
        self.events.append((kind, message, fields))


def job():
    return Job("backup", "aws", "pictures", "watch", Priority.ordinary(10), id="j1")


def test_success_reports_the_outcome_fields():
    emit = Recorder()
    assert run_job(job(), emit, lambda: 7, lambda n: (f": {n} files", {"files_new": n})) == 7
    (k1, m1, f1), (k2, m2, f2) = emit.events
    assert (k1, m1) == ("job.started", "pictures→aws: backup started")
    assert f1 == {
        "job": "j1",
        "operation": "backup",
        "backup": "pictures",
        "repository": "aws",
        "trigger": "watch",
        "priority": 10,
        "pid": os.getpid(),  # its job process: the queue shows it
    }
    assert (k2, m2) == ("job.succeeded", "pictures→aws: backup succeeded: 7 files")
    assert f2["files_new"] == 7
    assert f2["duration_sec"] >= 0


def test_failure_carries_the_one_line_reason_and_is_raised():
    emit = Recorder()

    def fail():
        raise WrongPassword("wrong password for repository aws")

    with pytest.raises(WrongPassword):
        run_job(job(), emit, fail)
    kind, message, fields = emit.events[-1]
    assert kind == "job.failed"
    assert fields["error"] == "wrong password for repository aws"
    assert message == "pictures→aws: backup failed: wrong password for repository aws"


def test_cancellation_is_its_own_event():
    emit = Recorder()

    def cancelled():
        raise JobCancelled("cancelled by henbackupctl")

    with pytest.raises(JobCancelled):
        run_job(job(), emit, cancelled)
    assert [kind for kind, _, _ in emit.events] == ["job.started", "job.cancelled"]


class StallingEngine:
    """Stands for an engine that reports a stall while the job's work runs (the real one
    is tests/faults/test_stall.py's subject)."""

    on_stall = None

    def work(self):
        self.on_stall(61.7, "restic waits and moves no data (is the backend up?)")
        return 1


def test_a_stall_of_the_engine_is_the_jobs_stalled_event_while_it_runs():
    emit, engine = Recorder(), StallingEngine()
    run_job(job(), emit, engine.work, engine=engine)
    assert [kind for kind, _, _ in emit.events] == ["job.started", "job.stalled", "job.succeeded"]
    _, message, fields = emit.events[1]
    assert message == (
        "pictures→aws: backup has made no progress for 1m2s: "
        "restic waits and moves no data (is the backend up?)"
    )
    assert fields["job"] == "j1" and fields["stalled_sec"] == 61.7
    assert fields["error"] == "restic waits and moves no data (is the backend up?)"
    assert engine.on_stall is None  # the next job reports its own
