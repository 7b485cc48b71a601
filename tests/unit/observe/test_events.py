import io
import json
import os
import re
from datetime import datetime, timedelta, timezone

import pytest

from henbackup.observe.events import (
    MESSAGE_IDS,
    Emitter,
    choose_sink,
    make_event,
    text_line,
    wanted_sink,
)


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


MOMENT = datetime(2026, 12, 2, 5, 3, 12, tzinfo=timezone(timedelta(hours=1)))


@pytest.mark.parametrize(
    ("kind", "message", "fields", "line"),
    [
        (  # the message already names backup→repository: not twice
            "job.failed",
            "pictures→aws: backup failed: locked",
            {"backup": "pictures", "repository": "aws", "job": "j1"},
            "2026-12-02 05:03:12 error   pictures→aws: backup failed: locked",
        ),
        (  # a message that does not: backup→repository leads it
            "hook.failed",
            "before hook 'mount' failed: exit 1",
            {"backup": "pictures", "repository": "aws"},
            "2026-12-02 05:03:12 warning pictures→aws: before hook 'mount' failed: exit 1",
        ),
        (
            "trigger.fired",
            "3 changes",
            {"backup": "pictures", "trigger": "watch"},
            "2026-12-02 05:03:12 info    pictures: 3 changes",
        ),
        (
            "job.succeeded",
            "check succeeded",
            {"repository": "aws"},
            "2026-12-02 05:03:12 info    aws: check succeeded",
        ),
        (
            "daemon.started",
            "henbackup started: 2 backups",
            {"pid": 7},
            "2026-12-02 05:03:12 notice  henbackup started: 2 backups",
        ),
        (  # one line, and no escape sequence from a file name reaches the terminal
            "job.warning",
            "cannot read /d/\x1b[2Jx\nsecond line\ttab",
            {},
            "2026-12-02 05:03:12 warning cannot read /d/\\x1b[2Jx second line\\ttab",
        ),
    ],
)
def test_the_text_line_of_an_event(kind, message, fields, line):
    assert text_line(make_event(kind, message, **fields), MOMENT) == line


def test_colour_marks_the_level_only():
    failed = make_event("job.failed", "x→y: failed", backup="x", repository="y")
    assert text_line(failed, MOMENT, colour=True) == (
        "2026-12-02 05:03:12 \x1b[31merror\x1b[0m   x→y: failed"
    )
    warned = make_event("job.warning", "w")
    assert text_line(warned, MOMENT, colour=True).split()[2] == "\x1b[33mwarning\x1b[0m"
    info = make_event("job.started", "s")
    assert text_line(info, MOMENT, colour=True) == text_line(info, MOMENT)


@pytest.mark.parametrize(
    ("variable", "sink"),
    [("json", "json"), ("stderr", "json"), ("text", "text"), ("journal", "journal")],
)
def test_the_variable_forces_a_sink(monkeypatch, variable, sink):
    monkeypatch.setenv("HENBACKUP_EVENTS", variable)
    assert choose_sink(io.StringIO()) == sink
    assert wanted_sink() == sink


def test_an_unknown_sink_is_refused_by_name_and_ignored_by_emitters(monkeypatch):
    monkeypatch.setenv("HENBACKUP_EVENTS", "xml")
    with pytest.raises(ValueError, match=r"^HENBACKUP_EVENTS='xml' is not one of json, "):
        wanted_sink()
    assert choose_sink(io.StringIO()) == "json"


def test_text_forced_onto_a_file_has_no_colour(monkeypatch):
    monkeypatch.setenv("HENBACKUP_EVENTS", "text")
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = io.StringIO()
    emit = Emitter(stream)
    emit("job.failed", "b→r: failed", backup="b", repository="r")
    assert re.fullmatch(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d error   b→r: failed\n", stream.getvalue())


@pytest.mark.parametrize(
    ("environment", "coloured"),
    [
        ({"TERM": "xterm-256color"}, True),
        ({"TERM": "xterm-256color", "NO_COLOR": "1"}, False),
        ({"TERM": "xterm-256color", "NO_COLOR": ""}, True),  # no-color.org: empty is unset
        ({"TERM": "dumb"}, False),
        ({}, False),
    ],
)
def test_colour_on_a_real_terminal_that_supports_it(monkeypatch, environment, coloured):
    for name in ("TERM", "NO_COLOR", "HENBACKUP_EVENTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    leader, follower = os.openpty()
    with open(follower, "w") as terminal, open(leader, "rb", buffering=0) as screen:
        emit = Emitter(terminal)
        assert (emit.use_journal, emit.text, emit.colour) == (False, True, coloured)
        emit("job.failed", "b→r: failed", backup="b", repository="r")
        shown = screen.read(200)
    assert (b"\x1b[31merror\x1b[0m" in shown) is coloured
    assert shown.endswith(b" b\xe2\x86\x92r: failed\r\n")
