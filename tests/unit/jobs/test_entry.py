"""SIGUSR1 (`henbackupctl cancel`) in a job process: the handler only records; the job acts
on it at its next checkpoint, and only for the job the queue marked."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import pytest

from henbackup.config.load import load_config
from henbackup.config.model import NORMAL
from henbackup.engine.base import RestoreResult, Snapshot
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


def test_a_restore_looks_its_snapshot_up_in_its_turn_not_behind_restics_lock(tmp_path, monkeypatch):
    """A prune holds the repository: restic would have waited for its lock unseen (up to
    lock_wait, and with no job to say so). The lookup waits in the queue instead, as a
    job.queued of its own, and looks once the prune is done. (The engine is faked: what
    is asserted is when it is asked.)"""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    path = tmp_path / "henbackup.toml"
    path.write_text(f'[repositories.local]\nlocation = "{tmp_path}/repo"\npassword = "pw"\n')
    config = load_config(path, env={}, hostname="testhost")
    scheduler = entry.host_scheduler()
    prune = scheduler.submit(Ticket("p1", "local", NORMAL, "exclusive", "prune")).grant
    assert prune is not None
    snapshot = Snapshot("a" * 64, "a" * 8, datetime.now(UTC), "testhost", ("/srv",), ("backup-b",))
    events, looked = [], []

    def emit(kind, message, **fields):
        events.append((kind, fields.get("operation")))
        if kind == "job.queued":
            prune.release()  # the prune ends while the lookup waits

    def find_snapshot(config, engine, repository, wanted):
        looked.append([(t.operation, t.state) for t in scheduler.queue()])
        return snapshot

    monkeypatch.setattr(entry, "find_snapshot", find_snapshot)
    result = RestoreResult(str(tmp_path / "out"), 1, 2, 0.1)
    monkeypatch.setattr(entry, "run_restore", lambda *args, **kwargs: result)
    request = {"repository": "local", "snapshot": "aaaa", "target": "", "include": []}
    reply = entry.ONE_OFFS["restore-snapshot"](config, request, emit)
    assert events[0] == ("job.queued", "snapshots")
    assert looked == [[("snapshots", "running")]]  # in its turn, the prune gone
    assert reply["snapshot"] == snapshot.id and reply["backup"] == "b"
