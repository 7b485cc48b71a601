"""The messages' declared shapes: a control request of the wrong shape is one usage line
naming what is wrong, a channel message of the wrong shape one ProtocolError; the status
reply's rows are their declared members; the job exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from typing import Any

import jsonschema
import pytest

from henbackup.channel import (
    MAX_LINE,
    Channel,
    ChannelMessage,
    Heartbeat,
    JobEvent,
    JobExit,
    JobState,
    OneOffResult,
    Ready,
    StartRun,
    Unwatch,
    Watch,
    WatchNews,
    decode_message,
    encode_message,
)
from henbackup.cli import ctl
from henbackup.errors import ProtocolError, UsageError
from henbackup.master.commands import COMMANDS
from henbackup.protocol import REQUESTS, build_request, decode, parse_request
from henbackup.status_rows import StatusRow, WorkerStatus, member_schemas


def test_every_command_the_master_answers_is_declared_and_no_other() -> None:
    assert sorted(REQUESTS) == sorted(COMMANDS)


def test_a_request_has_every_declared_field_none_when_not_sent() -> None:
    request = parse_request({"command": "backup", "backup": "pictures", "priority": -3})
    assert request.command == "backup"
    assert dict(request.fields) == {
        "backup": "pictures",
        "repository": None,
        "priority": -3,
        "wait": None,
    }
    assert request.get("backup") == "pictures"
    assert request.get("snapshot") is None  # not a field of backup


def test_null_counts_as_not_sent() -> None:
    request = parse_request({"command": "list-snapshots", "repository": None, "backup": None})
    assert dict(request.fields) == {"repository": None, "backup": None}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ([1, 2], "malformed request: no command"),
        ("status", "malformed request: no command"),
        ({}, "malformed request: no command"),
        ({"command": ["status"]}, "malformed request: no command"),
        ({"command": "explode"}, "unknown command 'explode'"),
        ({"command": "x" * 100}, f"unknown command '{'x' * 35}...'"),
        (
            {"command": "status", "colour": "blue"},
            "malformed request: status has no field 'colour'",
        ),
        ({"command": "status", "a\nb": 1}, "malformed request: status has no field 'a\\nb'"),
        ({"command": "cancel"}, "malformed request: cancel needs 'job'"),
        ({"command": "cancel", "job": None}, "malformed request: cancel needs 'job'"),
        (
            {"command": "backup", "backup": ["pictures"]},
            "malformed request: 'backup' of backup must be a string, not an array",
        ),
        (
            {"command": "list-snapshots", "repository": {"local": 1}},
            "malformed request: 'repository' of list-snapshots must be a string, not an object",
        ),
        (
            {"command": "restore-snapshot", "repository": "r", "snapshot": "abcd", "target": 5},
            "malformed request: 'target' of restore-snapshot must be a string, not a number",
        ),
        (
            {"command": "restore-snapshot", "repository": "r", "snapshot": "abcd", "include": 5},
            "malformed request: 'include' of restore-snapshot must be a list of strings,"
            " not a number",
        ),
        (
            {"command": "restore-snapshot", "repository": "r", "snapshot": "ab", "include": [1]},
            "malformed request: 'include' of restore-snapshot must be a list of strings,"
            " not an array",
        ),
        (
            {"command": "restore-snapshot", "repository": "r", "snapshot": "ab", "in_place": 1},
            "malformed request: 'in_place' of restore-snapshot must be true or false, not a number",
        ),
        (
            {"command": "check", "repository": "r", "priority": True},
            "malformed request: 'priority' of check must be a string or an integer, not a boolean",
        ),
        (
            {"command": "check", "repository": "r", "priority": 2.5},
            "malformed request: 'priority' of check must be a string or an integer, not a number",
        ),
        (
            {"command": "check", "repository": "r", "read_data_subset": 5},
            "malformed request: 'read_data_subset' of check must be a string, not a number",
        ),
        (
            {"command": "prune", "repository": "r", "wait": "yes"},
            "malformed request: 'wait' of prune must be true or false, not a string",
        ),
    ],
)
def test_a_request_of_the_wrong_shape_is_one_line_naming_the_field(data, error) -> None:
    with pytest.raises(UsageError) as raised:
        parse_request(data)
    assert str(raised.value) == error


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[" * 100_000 + b"]" * 100_000, b'{"command": ' + b"{" * 50_000],
)
def test_a_line_that_is_not_json_or_nested_beyond_the_stack_is_malformed(line: bytes) -> None:
    with pytest.raises(UsageError, match=r"^malformed request: expected one JSON object$"):
        decode(line)


def test_decode_parses_one_line() -> None:
    assert decode(b'{"command": "queue"}').command == "queue"


def test_henbackupctl_sends_the_declared_fields_of_its_command_only() -> None:
    options = {"command": "backup", "backup": "pictures", "socket": "/s", "json": True, "x": 1}
    assert build_request("backup", options) == {"command": "backup", "backup": "pictures"}


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["queue"],
        ["cancel", "j1"],
        ["backup", "pictures", "--repository", "aws", "--priority", "next", "--no-wait"],
        ["list-snapshots", "aws", "-b", "pictures"],
        ["restore-snapshot", "aws", "abcd", "--target", "/srv", "--include", "/a"],
        ["restore-snapshot", "aws", "abcd", "--in-place"],
        ["check", "aws", "--read-data-subset", "5%"],
        ["prune", "aws", "--json"],
    ],
)
def test_every_request_henbackupctl_makes_has_its_declared_shape(argv: list[str]) -> None:
    args: argparse.Namespace = ctl.get_parser().parse_args(argv)
    payload = ctl._payload(args)
    assert parse_request(payload).command == argv[0]
    assert set(payload) - {"command"} <= {field.name for field in REQUESTS[argv[0]]}


# --- channel messages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        Ready(),
        Heartbeat(),
        JobState("running", 1_700_000_000.5, "backup"),
        JobState("idle", None, exit=JobExit.CANCELLED, requests=("r1", "r2")),
        JobState("idle", exit=-9),  # killed by SIGKILL
        JobEvent("job.progress", "pictures→aws 42%", {"job": "0a1b2c3d", "percent": 42.0}),
        JobEvent("hook.failed", "ping failed", {}, ("r1",)),
        StartRun("backup", "aws", "-3", ("r1",)),
        StartRun(),
        OneOffResult({"ok": True, "snapshots": [], "errors": []}),
        OneOffResult({"ok": False, "code": "usage", "error": "no snapshot 'x'"}),
        Watch("pictures", ("/srv/pictures", "/home/ann"), ("*.tmp", "!keep.tmp")),
        Watch("music", ("/srv/music",)),
        Unwatch("music"),
        WatchNews("pictures", changes=3),
        WatchNews("pictures", overflow=True),
        # a limit message naming a directory that is not UTF-8 (os.fsdecode's escapes)
        WatchNews("pictures", limit="out of inotify watches while watching /srv/caf\udce9"),
    ],
)
def test_every_channel_message_decodes_to_what_was_encoded(message: ChannelMessage) -> None:
    line = encode_message(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_message(line) == message


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json", "malformed message: expected one JSON object"),
        (b"\xff\xfe", "malformed message: expected one JSON object"),
        (b"[" * 100_000, "malformed message: expected one JSON object"),
        (b'["ready"]', "malformed message: no type"),
        (b'{"kind": "job.started"}', "malformed message: no type"),
        (b'{"type": 1}', "malformed message: no type"),
        (b'{"type": "reboot"}', "malformed message: unknown type 'reboot'"),
        (b'{"type": "ready", "pid": 3}', "malformed message: ready has no field 'pid'"),
        (b'{"type": "job"}', "malformed message: job needs 'state'"),
        (
            b'{"type": "job", "state": "stopped"}',
            'malformed message: \'state\' of job must be "running" or "idle", not a string',
        ),
        (
            b'{"type": "job", "state": "idle", "exit": "3"}',
            "malformed message: 'exit' of job must be an integer, not a string",
        ),
        (
            b'{"type": "job", "state": "idle", "next_run": true}',
            "malformed message: 'next_run' of job must be a number, not a boolean",
        ),
        (
            b'{"type": "job", "state": "idle", "requests": "r1"}',
            "malformed message: 'requests' of job must be a list of strings, not a string",
        ),
        (
            b'{"type": "event", "kind": "job.started", "message": "m"}',
            "malformed message: event needs 'fields'",
        ),
        (
            b'{"type": "event", "kind": "job.started", "message": "m", "fields": []}',
            "malformed message: 'fields' of event must be an object, not an array",
        ),
        (
            b'{"type": "run", "priority": 3}',
            "malformed message: 'priority' of run must be a string, not a number",
        ),
        (b'{"type": "result"}', "malformed message: result needs 'ok', true or false"),
        (
            b'{"type": "result", "ok": false, "code": "oops"}',
            "malformed message: a failed result's 'code' is one of usage, failed, permission",
        ),
        (
            b'{"type": "result", "ok": true, "error": 3}',
            "malformed message: 'error' of result must be a string",
        ),
    ],
)
def test_a_malformed_channel_message_is_one_protocol_error(line: bytes, error: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        decode_message(line)
    assert str(raised.value) == error


def test_job_exit_codes_are_the_ones_the_processes_exit_with() -> None:
    assert [(code.name, int(code)) for code in JobExit] == [
        ("OK", 0),
        ("FAILED", 1),
        ("CANCELLED", 3),
    ]


def test_henbackupctl_does_not_import_the_server() -> None:
    """It runs as any user, with the daemon's code nowhere near: the protocol is enough."""
    code = "import sys, henbackup.cli.ctl; print(sorted(m for m in sys.modules if 'master' in m))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


# --- the status reply ----------------------------------------------------------------------


def _strict(declared: type[StatusRow | WorkerStatus]) -> dict[str, Any]:
    members = member_schemas(declared)
    return {
        "type": "object",
        "properties": members,
        "required": list(members),
        "additionalProperties": False,
    }


def test_a_status_row_is_its_declared_members_each_with_a_valid_schema() -> None:
    row = StatusRow(
        "aws",
        "queued",
        "0a1b2c3d",
        2,
        None,
        1.7e9,
        1.6e9,
        "failed",
        12.5,
        "no key",
        None,
        3,
        "nice=10",
        1.5,
        2**20,
    )
    row = dataclasses.asdict(row)
    assert list(row) == [
        "repository",
        "state",
        "job",
        "position",
        "percent",
        "last_attempt",
        "last_success",
        "result",
        "duration",
        "error",
        "snapshot",
        "snapshots",
        "limits",
        "cpu_sec",
        "memory_peak",
        "bytes_done",
        "total_bytes",
        "bytes_sent",
        "send_rate",
        "seconds_remaining",
    ]
    schema = _strict(StatusRow)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(row, schema)
    for wrong in (
        {"state": "asleep"},
        {"position": 0},
        {"error": "two\nlines"},
        {"cpu_sec": -1},
        {"bytes_sent": -1},
        {"x": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**row, **wrong}, schema)


def test_a_worker_status_is_its_declared_members_each_with_a_valid_schema() -> None:
    schema = _strict(WorkerStatus)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert dataclasses.asdict(WorkerStatus(None, "idle", None)) == {
        "worker": None,
        "run": "idle",
        "next_run": None,
    }
    jsonschema.validate(dataclasses.asdict(WorkerStatus("backoff", "running", 1.8e9)), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dataclasses.asdict(WorkerStatus("dead", "idle", None)), schema)


def test_a_list_of_thousands_of_snapshots_crosses_a_channel_in_one_reply() -> None:
    """A one-off's reply is one line: 4,000 snapshots (no retention, a backup every hour
    for half a year) are 1.2 MB of it. Over 1 MiB, the master refused the line and the
    client heard only that the job process exited."""
    row = {
        "id": "0" * 64,
        "short_id": "0" * 8,
        "time": "2026-12-04T16:29:03.123456+00:00",
        "backup": "pictures",
        "repository": "aws-ireland",
        "host": "raspberrypi.home.example",
        "paths": ["/srv/pictures"],
        "tags": ["backup-pictures"],
    }
    rows = [{**row, "bytes_added": n} for n in range(4000)]
    parent, child = Channel.pair()
    try:
        child.sock.setblocking(False)
        child.send_without_waiting(OneOffResult({"ok": True, "snapshots": rows}))
        received: list[ChannelMessage] = []
        while not received:
            child.flush()
            received += parent.receive(lambda error: pytest.fail(str(error))) or []
        assert received == [OneOffResult({"ok": True, "snapshots": rows})]
        child.send_without_waiting(Heartbeat())  # and what follows it, as ever
        child.flush()
        assert parent.receive(lambda error: pytest.fail(str(error))) == [Heartbeat()]
    finally:
        parent.close()
        child.close()


def test_a_line_past_max_line_without_a_newline_is_refused() -> None:
    parent, child = Channel.pair()
    try:
        child.sock.setblocking(False)
        child.unsent = b"x" * (MAX_LINE + 1)
        with pytest.raises(ValueError, match="message too long"):
            while True:
                child.flush()
                parent.receive(lambda error: pytest.fail(str(error)))
    finally:
        parent.close()
        child.close()
