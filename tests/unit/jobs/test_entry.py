"""SIGUSR1 (`henbackupctl cancel`) in a job process: the handler only records; the job acts
on it at its next checkpoint, and only for the job the queue marked."""

from __future__ import annotations

import os
import signal

import pytest

from henbackup.config.model import NORMAL
from henbackup.errors import JobCancelled
from henbackup.jobs import entry
from henbackup.scheduler.ticket import Ticket


@pytest.fixture
def handler(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    previous = signal.signal(signal.SIGUSR1, entry._note_cancel)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_the_marked_job_is_cancelled_at_its_next_checkpoint_once(handler):
    scheduler = entry.host_scheduler()
    with scheduler.acquire(Ticket("cancel-me-1", "local", NORMAL)):
        entry.honour_cancel()  # no signal came: not even a look at the queue
        os.kill(os.getpid(), signal.SIGUSR1)  # a cancel meant for a job that has ended
        entry.honour_cancel()  # nothing marked for this process: the job goes on
        scheduler.cancel("cancel-me-1")
        os.kill(os.getpid(), signal.SIGUSR1)  # the handler only sets the flag: no raise here
        with pytest.raises(JobCancelled, match="job cancel-me-1 cancelled"):
            entry.honour_cancel()
        os.kill(os.getpid(), signal.SIGUSR1)  # a second cancel of the same job
        entry.honour_cancel()  # must not interrupt restic's clean stop
