import io
import json
import os

import pytest

from henbackup.observe.events import MESSAGE_IDS, Emitter, make_event


def test_fields_are_prefixed_and_none_is_left_out():
    event = make_event("job.succeeded", "done", job="ab12", backup="pictures", snapshot=None)
    assert event.journal_fields() == {
        "MESSAGE": "done",
        "PRIORITY": "6",
        "MESSAGE_ID": MESSAGE_IDS["job.succeeded"],
        "SYSLOG_IDENTIFIER": "henbackup",
        "HENBACKUP_EVENT": "job.succeeded",
        "HENBACKUP_JOB": "ab12",
        "HENBACKUP_BACKUP": "pictures",
    }


def test_numbers_are_text_and_durations_keep_milliseconds():
    event = make_event("job.succeeded", "m", duration_sec=1.23456, bytes_added=42)
    assert dict(event.fields) == {"HENBACKUP_DURATION_SEC": "1.235", "HENBACKUP_BYTES_ADDED": "42"}


def test_failures_are_errors_for_syslog():
    assert make_event("job.failed", "m").priority == 3
    assert make_event("config.invalid", "m").priority == 3
    assert make_event("hook.failed", "m").priority == 4


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(KeyError):
        make_event("job.exploded", "m")


def test_message_ids_are_distinct_uuids():
    ids = list(MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_without_journal_one_json_object_per_line():
    stream = io.StringIO()
    emit = Emitter(stream, use_journal=False)
    emit("trigger.fired", "pictures: 3 changes", backup="pictures", trigger="watch")
    emit("job.queued", "queued", job="x1")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["HENBACKUP_EVENT"] == "trigger.fired"
    assert first["HENBACKUP_TRIGGER"] == "watch"
    assert first["MESSAGE"] == "pictures: 3 changes"
    assert int(first["__REALTIME_TIMESTAMP"]) > 1_600_000_000_000_000
    assert second["HENBACKUP_JOB"] == "x1"


def test_stderr_not_bound_to_the_journal_means_json(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    monkeypatch.delenv("HENBACKUP_EVENTS", raising=False)
    assert Emitter(io.StringIO()).use_journal is False
    monkeypatch.setenv("HENBACKUP_EVENTS", "journal")
    assert Emitter(io.StringIO()).use_journal is True


def test_bytes_of_a_file_name_that_are_not_utf8_become_escapes():
    odd = os.fsdecode(b"/data/caf\xe9")  # '/data/caf\udce9': what os.listdir gives
    event = make_event("watch.limit", f"out of watches while watching {odd}", path=odd)
    assert event.message == "out of watches while watching /data/caf\\xe9"
    assert dict(event.fields) == {"HENBACKUP_PATH": "/data/caf\\xe9"}
    assert make_event("job.warning", "lone \ud800").message == "lone \\ud800"
    stream = io.StringIO()
    Emitter(stream, use_journal=False)("watch.limit", odd)
    assert json.loads(stream.getvalue())["MESSAGE"] == "/data/caf\\xe9"
