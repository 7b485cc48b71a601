"""Run records: atomic, durable, and never trusted when they make no sense."""

from __future__ import annotations

import json
import os

import pytest

from henbackup import files
from henbackup.names import backup_record, maintenance_record
from henbackup.worker.state import ScheduleRecord, StateStore


@pytest.fixture
def problems():
    return []


@pytest.fixture
def store(tmp_path, problems):
    return StateStore(tmp_path / "state", problems.append)


def test_a_missing_record_is_empty_and_no_problem(store, problems):
    assert store.load(backup_record("pictures")) == ScheduleRecord()
    assert problems == []


def test_records_round_trip_and_survive_a_new_store(tmp_path, store, problems):
    key = backup_record("pictures")
    store.record_attempt(key, 1000.5)
    store.record_success(key, 1000.5)
    store.record_attempt(key, 2000.0)
    again = StateStore(tmp_path / "state", problems.append)
    assert again.load(key) == ScheduleRecord(last_success=1000.5, last_attempt=2000.0)
    assert problems == []


def test_each_backup_and_operation_has_its_own_file(store):
    store.save(backup_record("a"), ScheduleRecord(1.0, 1.0))
    store.save(maintenance_record("aws", "check"), ScheduleRecord(2.0, 2.0))
    store.save(maintenance_record("aws", "prune"), ScheduleRecord(3.0, 3.0))
    assert store.load(backup_record("a")).last_success == 1.0
    assert store.load(maintenance_record("aws", "check")).last_success == 2.0
    assert store.load(maintenance_record("aws", "prune")).last_success == 3.0


@pytest.mark.parametrize("name", ["a/b", "..", ".", "", "../../etc/passwd", "x%2F", "é t"])
def test_odd_names_stay_inside_the_state_directory(store, name):
    for key in (backup_record(name), maintenance_record(name, "check")):
        path = store.path(key).resolve()
        assert path.is_relative_to(store.directory.resolve())
        store.save(key, ScheduleRecord(5.0, 5.0))
        assert store.load(key) == ScheduleRecord(5.0, 5.0)
    assert backup_record("a/b") != backup_record("a%2Fb")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'"text"',
        b'{"last_success": "yesterday"}',
        b'{"last_success": true}',
        b'{"last_success": NaN}',
        b'{"last_attempt": Infinity}',
        b'{"last_failure": "restic exited 1"}',
        b'{"last_success": [1]}',
        b'{"last_success": -1e18}',  # datetime.fromtimestamp: OSError, ValueError
        b'{"last_attempt": -1}',
        b'{"changed_since": 8589934592}',  # 2**33: the year 2242
        b'{"last_failure": 1e300}',
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the stack: RecursionError
    ],
)
def test_a_corrupt_record_counts_as_absent_and_is_reported(store, problems, content):
    key = backup_record("pictures")
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_bytes(content)
    assert store.load(key) == ScheduleRecord()
    assert len(problems) == 1 and str(store.path(key)) in problems[0]


def test_an_unreadable_record_counts_as_absent_and_is_reported(store, problems):
    key = backup_record("pictures")
    store.path(key).mkdir(parents=True)  # a directory where the file should be
    assert store.load(key) == ScheduleRecord()
    assert "cannot read" in problems[0]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "huge"])
def test_a_record_that_is_no_small_regular_file_counts_as_absent(store, problems, kind):
    """A FIFO blocked the worker before its loop ran (that backup never ran again);
    /dev/zero filled its memory."""
    key = backup_record("pictures")
    path = store.path(key)
    path.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_bytes(b" " * (1 << 20) + b"{}")
    else:
        path.symlink_to("/dev/zero")
    assert store.load(key) == ScheduleRecord()
    assert "cannot read" in problems[0]


def test_unknown_fields_are_ignored_and_integers_accepted(store, problems):
    key = backup_record("p")
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_text(json.dumps({"last_success": 7, "future": {"x": 1}}))
    assert store.load(key) == ScheduleRecord(last_success=7.0)
    assert problems == []


def test_the_write_is_atomic_and_synced(store, monkeypatch):
    key = backup_record("p")
    store.save(key, ScheduleRecord(1.0, 1.0))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store.save(key, ScheduleRecord(2.0, 2.0))
    assert len(synced) == 2  # the file, then the directory holding the new name
    assert [p.name for p in store.path(key).parent.iterdir()] == ["p.json"]  # no temporaries


def test_a_failed_write_leaves_the_old_record_and_no_temporary(store, monkeypatch):
    key = backup_record("p")
    store.save(key, ScheduleRecord(1.0, 1.0))

    def crash(source, target, **dir_fds):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError):
        store.save(key, ScheduleRecord(2.0, 2.0))
    assert store.load(key) == ScheduleRecord(1.0, 1.0)
    assert [p.name for p in store.path(key).parent.iterdir()] == ["p.json"]


def test_a_record_that_cannot_be_saved_is_kept_in_memory_and_reported_once(tmp_path, problems):
    unsaved = []
    store = StateStore(tmp_path / "state", problems.append, lambda m, e: unsaved.append(e))
    key = backup_record("pictures")
    store.path(key).mkdir(parents=True)  # neither readable nor replaceable
    assert store.record_attempt(key, 10.0) == ScheduleRecord(last_attempt=10.0)
    assert store.record_success(key, 10.0) == ScheduleRecord(last_success=10.0, last_attempt=10.0)
    store.record_change(key, 11.0)
    assert store.load(key) == ScheduleRecord(10.0, 10.0, 11.0)  # what the schedule goes by
    assert unsaved == ["Is a directory"]
    assert len(problems) == 1 and "cannot read the run record" in problems[0]

    store.path(key).rmdir()  # saving works again: the record is whole on disk
    store.record_attempt(key, 20.0)
    assert StateStore(tmp_path / "state", problems.append).load(key) == ScheduleRecord(
        10.0, 20.0, 11.0
    )
    store.path(key).unlink()
    store.path(key).mkdir()  # and fails once more: said again
    store.record_success(key, 20.0)
    assert unsaved == ["Is a directory", "Is a directory"]


def test_a_record_nested_too_deeply_counts_as_absent(store, problems):
    key = backup_record("pictures")
    store.path(key).parent.mkdir(parents=True)
    store.path(key).write_text("[" * 60_000)
    assert store.load(key) == ScheduleRecord()
    assert len(problems) == 1 and "corrupt run record" in problems[0]


def test_a_failure_round_trips_and_an_old_record_without_it_still_reads(tmp_path, store, problems):
    key = backup_record("pictures")
    store.record_attempt(key, 1000.5)
    store.record_failure(key, 1000.5)
    again = StateStore(tmp_path / "state", problems.append)
    assert again.load(key) == ScheduleRecord(last_attempt=1000.5, last_failure=1000.5)
    old = backup_record("old")  # as written before last_failure existed
    store.path(old).write_text('{"last_success": 5, "last_attempt": 9, "changed_since": null}')
    assert again.load(old) == ScheduleRecord(last_success=5.0, last_attempt=9.0)
    assert problems == []


@pytest.mark.parametrize(
    ("record", "failed", "unfinished"),
    [
        (ScheduleRecord(), False, False),
        (ScheduleRecord(last_success=5.0, last_attempt=5.0), False, False),
        (ScheduleRecord(last_success=5.0, last_attempt=9.0, last_failure=9.0), True, False),
        (ScheduleRecord(last_attempt=9.0, last_failure=9.0), True, False),
        (ScheduleRecord(last_success=5.0, last_attempt=9.0), False, True),  # no end: interrupted
        (ScheduleRecord(last_attempt=9.0, last_failure=7.0), False, True),  # an older failure
        (ScheduleRecord(last_success=9.0, last_attempt=9.0, last_failure=7.0), False, False),
        (ScheduleRecord(last_success=9.0, last_attempt=8.0), False, False),  # clock set back
    ],
)
def test_how_the_last_run_ended(record, failed, unfinished):
    assert (record.failed, record.unfinished) == (failed, unfinished)
