"""What a waiting henbackupctl shows: the progress bar, redrawn in place on a terminal."""

from __future__ import annotations

import os

import pytest

from henbackup.cli.progress import ProgressDisplay, bar

MIB, GIB = 1024**2, 1024**3
CLEAR = "\r\x1b[K"  # back to the line's start, erase to its end


class FakeTerminal:
    """A text stream that records what was written and when it was flushed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def write(self, text: str) -> int:
        self.calls.append(("write", text))
        return len(text)

    def flush(self) -> None:
        self.calls.append(("flush", ""))

    @property
    def text(self) -> str:
        return "".join(text for call, text in self.calls if call == "write")

    @property
    def unflushed(self) -> str:
        """What was written after the last flush (a terminal may not show it yet)."""
        pending = ""
        for call, text in self.calls:
            pending = "" if call == "flush" else pending + text
        return pending


def test_a_bar_with_bytes_rate_and_eta() -> None:
    event = {
        "backup": "pictures",
        "repository": "aws",
        "percent": 1200 / 3072 * 100,  # 39.06
        "bytes_done": 1200 * MIB,
        "total_bytes": 3 * GIB,
        "seconds_elapsed": 100,
        "seconds_remaining": 180,
    }
    assert bar(event) == (
        "pictures→aws  [#########---------------]   39%  1.17 GiB/3.00 GiB  12.0 MiB/s  "
        "ETA 3 min 0 s"
    )


@pytest.mark.parametrize(
    ("event", "shown"),
    [
        ({"repository": "aws", "operation": "check"}, "aws  [------------------------]    0%"),
        ({"repository": "aws", "percent": None}, "aws  [------------------------]    0%"),
        ({"repository": "aws", "percent": "50"}, "aws  [############------------]   50%"),
        ({"repository": "aws", "percent": 2.1}, "aws  [#-----------------------]    2%"),
        ({"repository": "aws", "percent": 100}, "aws  [########################]  100%"),
        ({"repository": "aws", "percent": 140}, "aws  [########################]  100%"),
        ({"repository": "aws", "percent": -5}, "aws  [------------------------]    0%"),
    ],
)
def test_the_bar_is_24_wide_and_its_percent_3_wide_and_bounded(event, shown) -> None:
    assert bar(event) == shown


def test_a_backup_bar_shows_what_was_read_and_sent_and_the_rate_achieved() -> None:
    # restic read everything at once, the upload goes at 150 KiB/s: the rate is the sent one
    event = {
        "backup": "pictures",
        "repository": "aws",
        "percent": 30,
        "bytes_done": 3 * GIB,
        "total_bytes": 3 * GIB,
        "seconds_elapsed": 10,  # 300 MiB/s read on average: not what the upload achieves
        "bytes_sent": 900 * MIB,
        "send_rate": 150 * 1024,
        "seconds_remaining": 14700,
    }
    assert bar(event) == (
        "pictures→aws  [#######-----------------]   30%  3.00 GiB/3.00 GiB read  "
        "900.0 MiB sent  150.0 KiB/s  ETA 4 h 5 min"
    )
    no_rate_yet = {**event, "send_rate": None, "seconds_remaining": None}
    assert bar(no_rate_yet).endswith("   30%  3.00 GiB/3.00 GiB read  900.0 MiB sent")


@pytest.mark.parametrize(
    ("extra", "tail"),
    [
        ({"bytes_done": 512}, "512 B"),  # no total, no time: bytes only
        ({"bytes_done": 512, "total_bytes": 0}, "512 B"),
        ({"bytes_done": 0, "total_bytes": 2048, "seconds_elapsed": 4}, "0 B/2.00 KiB  0 B/s"),
        ({"bytes_done": 3 * MIB, "seconds_elapsed": 0}, "3.00 MiB"),
        ({"bytes_done": 3 * MIB, "seconds_elapsed": "2"}, "3.00 MiB  1.50 MiB/s"),
        ({"seconds_remaining": 0}, "ETA 0.0 s"),  # the ETA alone, without bytes
        ({"seconds_remaining": "7300"}, "ETA 2 h 1 min"),
    ],
)
def test_bytes_rate_and_eta_when_known(extra, tail) -> None:
    event = {"backup": "music", "repository": "nas", "percent": 25, **extra}
    assert bar(event) == f"music→nas  [######------------------]   25%  {tail}"


STARTED = {"kind": "job.started", "message": "pictures→aws: backup started"}
SUCCEEDED = {"kind": "job.succeeded", "message": "pictures→aws: backup succeeded, snapshot 1a"}


def progress(percent: float) -> dict[str, object]:
    return {"kind": "job.progress", "backup": "pictures", "repository": "aws", "percent": percent}


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_cleared_before_a_step() -> None:
    stream = FakeTerminal()
    shown = ProgressDisplay(stream, terminal=True)
    shown({"kind": "job.queued", "message": "pictures→aws: backup queued"})
    shown(STARTED)
    shown(progress(25))
    assert stream.unflushed == ""  # the bar is on the screen now, not when the buffer fills
    shown(progress(50))
    shown(SUCCEEDED)
    shown.close()
    assert stream.text == (
        "pictures→aws: backup queued\n"
        "pictures→aws: backup started\n"
        f"{CLEAR}{bar(progress(25))}"
        f"{CLEAR}{bar(progress(50))}"
        f"{CLEAR}pictures→aws: backup succeeded, snapshot 1a\n"
    )
    assert bar(progress(50)) == "pictures→aws  [############------------]   50%"
    assert stream.unflushed == ""


def test_closing_while_a_bar_is_drawn_erases_it_once() -> None:
    stream = FakeTerminal()
    shown = ProgressDisplay(stream, terminal=True)
    shown(progress(10))
    shown.close()
    shown.close()
    assert stream.text == f"{CLEAR}{bar(progress(10))}{CLEAR}"
    assert stream.unflushed == ""  # the cursor is back at the line's start before exiting


def test_a_step_right_after_a_step_clears_nothing() -> None:
    stream = FakeTerminal()
    shown = ProgressDisplay(stream, terminal=True)
    shown(STARTED)
    shown({"kind": "hook.failed", "message": "hook 1 of grafana failed: timeout"})
    shown({"kind": "job.cancelled", "message": "pictures→aws: backup cancelled"})
    shown.close()
    assert stream.text == (
        "pictures→aws: backup started\n"
        "hook 1 of grafana failed: timeout\n"
        "pictures→aws: backup cancelled\n"
    )


def test_elsewhere_only_the_steps_are_printed() -> None:
    stream = FakeTerminal()
    shown = ProgressDisplay(stream, terminal=False)
    shown(STARTED)
    shown(progress(30))
    shown(progress(60))
    shown({"kind": "job.failed", "message": "pictures→aws: backup failed: no route"})
    shown.close()
    assert stream.text == ("pictures→aws: backup started\npictures→aws: backup failed: no route\n")
    assert "\r" not in stream.text and "\x1b" not in stream.text


@pytest.mark.parametrize("terminal", [True, False])
def test_which_events_are_steps(terminal: bool) -> None:
    stream = FakeTerminal()
    shown = ProgressDisplay(stream, terminal=terminal)
    for kind in ("hook.started", "trigger.fired", "job.snapshot", "child.started", None):
        shown({"kind": kind, "message": f"not a step: {kind}"})
    shown({"kind": "hook.succeeded", "message": "hook 1 of grafana succeeded"})
    shown({"kind": "job.succeeded"})  # no message: its kind
    shown.close()
    assert stream.text == "hook 1 of grafana succeeded\njob.succeeded\n"


def test_a_stall_is_said_under_the_frozen_bar() -> None:
    """A waiting client sees why its bar stopped moving, and the bar comes back after."""
    stream = FakeTerminal()
    shown = ProgressDisplay(stream, terminal=True)
    stalled = "pictures→aws: backup has made no progress for 1m: restic waits and moves no data"
    shown(progress(40))
    shown({"kind": "job.stalled", "message": stalled})
    shown(progress(41))
    shown.close()
    assert stream.text == (
        f"{CLEAR}{bar(progress(40))}{CLEAR}{stalled}\n{CLEAR}{bar(progress(41))}{CLEAR}"
    )


def test_a_reader_that_left_stops_the_display_not_the_wait() -> None:
    """`henbackupctl backup pictures | head -1`: the pipe's reader is gone; the steps after
    that go nowhere, without an error, and the client waits on for the job's end."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        display = ProgressDisplay(stream, terminal=False)
        display({"kind": "job.started", "message": "pictures→local: backup started"})
        display({"kind": "job.succeeded", "message": "pictures→local: backup succeeded"})
        display.close()
        assert os.readlink(f"/proc/self/fd/{write_end}") == os.devnull
