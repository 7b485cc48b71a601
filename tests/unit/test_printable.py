"""Text from outside shown on a terminal: no control character reaches it as such, in
henbackupctl's views, its progress and its errors, and in henbackupctl logs."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from henbackup.cli import ctl, logs
from henbackup.cli.progress import ProgressDisplay
from henbackup.printable import printable
from henbackup.protocol import frame
from tests.unit.cli.test_progress import FakeTerminal

# a file name, a server's message, a snapshot's host: retitles the terminal, clears it,
# a C1 CSI, backspaces over what came before, a carriage return, a bidi override
HOSTILE = "a\x1b]0;owned\x07\x1b[2J\x9b31m\b\b\rb\u202ecod.exe"
UNSAFE = ("\x1b", "\x9b", "\x07", "\b", "\r", "\u202e")


def test_every_control_character_is_escaped_and_the_rest_kept() -> None:
    assert printable(HOSTILE) == "a\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x08\\x08 b\\u202ecod.exe"
    assert printable("line\none\r\nthé ☃ 漢字") == "line one thé ☃ 漢字"


def clean(text: str) -> bool:
    return not any(char in text for char in UNSAFE)


def test_a_view_shows_a_hostile_snapshot_host_escaped(capsys: pytest.CaptureFixture) -> None:
    snapshot = {
        "short_id": "abcd1234",
        "time": "2026-12-01T10:00:00+00:00",
        "repository": "aws",
        "host": HOSTILE,
        "paths": [f"/srv/{HOSTILE}"],
    }
    args = argparse.Namespace(json=False, command="list-snapshots")
    reply = {"ok": False, "snapshots": [snapshot], "error": HOSTILE, "code": "failed"}
    assert ctl._show(args, reply, frame(reply)) == 1
    out, err = capsys.readouterr()
    assert "a\\x1b]0;owned" in out and clean(out)
    assert err.startswith("henbackupctl: a\\x1b]0;owned") and clean(err)


def test_the_progress_shows_a_hostile_message_escaped() -> None:
    terminal = FakeTerminal()
    display = ProgressDisplay(terminal, terminal=True)
    display({"kind": "job.progress", "backup": "pictures", "repository": "aws", "percent": 5})
    display({"kind": "job.failed", "message": HOSTILE})
    own = terminal.text.replace("\r\x1b[K", "")  # the display's own: redraw in place
    assert "a\\x1b]0;owned" in own and clean(own)


def test_a_journal_entry_is_shown_escaped() -> None:
    entry = {
        "__REALTIME_TIMESTAMP": datetime(2026, 12, 1, 10, tzinfo=UTC),
        "HENBACKUP_EVENT": f"job.succeeded{HOSTILE}",
        "MESSAGE": HOSTILE,
    }
    line = logs.format_line(entry, UTC)
    assert "a\\x1b]0;owned" in line and clean(line)
