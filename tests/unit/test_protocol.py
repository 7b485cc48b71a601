"""The control requests' declared shapes: one usage line naming what is wrong, or a typed
request with every declared field."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from henbackup.cli import ctl
from henbackup.errors import UsageError
from henbackup.master.commands import COMMANDS
from henbackup.protocol import REQUESTS, build_request, decode, parse_request


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


def test_henbackupctl_does_not_import_the_server() -> None:
    """It runs as any user, with the daemon's code nowhere near: the protocol is enough."""
    code = "import sys, henbackup.cli.ctl; print(sorted(m for m in sys.modules if 'master' in m))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"
