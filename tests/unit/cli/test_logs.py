"""`henbackupctl logs` formatting: journal entries (as systemd.journal.Reader gives them)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from henbackup.cli.logs import format_json, format_line, json_line

PARIS = ZoneInfo("Europe/Paris")
# 2026-11-26 13:03:12.5 UTC: 14:03:12 in Paris in winter (+01:00).
WINTER = datetime(2026, 11, 26, 13, 3, 12, 500000, tzinfo=UTC)


def entry(moment: datetime = WINTER, **fields: Any) -> dict[str, Any]:
    """A journal entry as Reader.get_next() returns it: converted time, PRIORITY and ids."""
    return {
        "__REALTIME_TIMESTAMP": moment,
        "__CURSOR": "s=abc;i=1",
        "MESSAGE_ID": uuid.UUID("a9e817b7809241c1a667ca60a3b1e22f"),
        "SYSLOG_IDENTIFIER": "henbackup",
        "_PID": 4242,
        **fields,
    }


FAILED = entry(
    MESSAGE="pictures → aws: backup failed: wrong password for repository aws",
    PRIORITY=3,
    HENBACKUP_EVENT="job.failed",
    HENBACKUP_JOB="j-17",
    HENBACKUP_BACKUP="pictures",
    HENBACKUP_REPOSITORY="aws",
    HENBACKUP_OPERATION="backup",
    HENBACKUP_DURATION_SEC="3.250",
    HENBACKUP_ERROR="wrong password for repository aws",
)


def test_a_line_is_local_time_kind_and_message() -> None:
    assert format_line(FAILED, PARIS) == (
        "2026-11-26 14:03:12 job.failed      "
        "pictures → aws: backup failed: wrong password for repository aws"
    )


def test_kinds_are_padded_so_that_messages_line_up() -> None:
    started = entry(MESSAGE="henbackup started: 2 backups", HENBACKUP_EVENT="daemon.started")
    queued = entry(MESSAGE="pictures → aws: backup queued", HENBACKUP_EVENT="job.queued")
    assert format_line(started, PARIS) == (
        "2026-11-26 14:03:12 daemon.started  henbackup started: 2 backups"
    )
    assert format_line(queued, PARIS) == (
        "2026-11-26 14:03:12 job.queued      pictures → aws: backup queued"
    )


def test_summer_time_uses_the_summer_offset() -> None:
    summer = entry(datetime(2026, 7, 1, 22, 30, 0, tzinfo=UTC), MESSAGE="m", HENBACKUP_EVENT="e")
    assert format_line(summer, PARIS) == "2026-07-02 00:30:00 e               m"
    assert format_json(summer, PARIS)["time"] == "2026-07-02T00:30:00.000000+02:00"


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone set to Asia/Kolkata (+05:30), restored afterwards."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_without_a_zone_the_time_is_local(local_zone: None) -> None:
    assert format_line(FAILED).startswith("2026-11-26 18:33:12 job.failed ")
    assert format_json(FAILED)["time"] == "2026-11-26T18:33:12.500000+05:30"


def test_a_multi_line_message_stays_on_one_line() -> None:
    two = entry(MESSAGE="first\nsecond", HENBACKUP_EVENT="config.invalid")
    assert format_line(two, PARIS) == "2026-11-26 14:03:12 config.invalid  first second"


def test_an_entry_without_an_event_kind_shows_a_dash() -> None:
    # e.g. a traceback the daemon wrote to stderr: same SYSLOG_IDENTIFIER, no HENBACKUP_ fields
    raw = entry(MESSAGE="Traceback (most recent call last):", PRIORITY=6)
    assert format_line(raw, PARIS) == (
        "2026-11-26 14:03:12 -               Traceback (most recent call last):"
    )
    assert format_json(raw, PARIS) == {
        "time": "2026-11-26T14:03:12.500000+01:00",
        "event": None,
        "message": "Traceback (most recent call last):",
        "priority": 6,
    }


def test_json_has_the_fixed_keys_then_every_henbackup_field() -> None:
    assert format_json(FAILED, PARIS) == {
        "time": "2026-11-26T14:03:12.500000+01:00",
        "event": "job.failed",
        "message": "pictures → aws: backup failed: wrong password for repository aws",
        "priority": 3,
        "backup": "pictures",
        "duration_sec": "3.250",
        "error": "wrong password for repository aws",
        "job": "j-17",
        "operation": "backup",
        "repository": "aws",
    }


def test_a_json_line_is_one_line_in_a_stable_key_order() -> None:
    line = json_line(FAILED, PARIS)
    assert "\n" not in line
    assert "→" in line  # kept readable, not \u2192
    assert list(json.loads(line)) == [
        "time",
        "event",
        "message",
        "priority",
        "backup",
        "duration_sec",
        "error",
        "job",
        "operation",
        "repository",
    ]


def test_whole_seconds_keep_their_microseconds_in_json() -> None:
    exact = entry(datetime(2026, 11, 26, 13, 3, 12, tzinfo=UTC), MESSAGE="m", PRIORITY=5)
    assert format_json(exact, PARIS)["time"] == "2026-11-26T14:03:12.000000+01:00"


def test_a_missing_priority_is_info() -> None:
    assert format_json(entry(MESSAGE="m"), PARIS)["priority"] == 6


def test_odd_values_from_the_reader_still_give_strings() -> None:
    # The Reader leaves non-UTF-8 bytes as bytes and gives a list for a repeated field.
    odd = entry(
        MESSAGE=b"caf\xe9",
        HENBACKUP_EVENT="hook.failed",
        HENBACKUP_HOOK=["dump", "upload"],
    )
    assert format_line(odd, PARIS) == "2026-11-26 14:03:12 hook.failed     caf\ufffd"
    produced = format_json(odd, PARIS)
    assert (produced["message"], produced["hook"]) == ("caf\ufffd", "dump upload")
