"""Where `henbackup backup` writes its events: readable lines on a real terminal (a pty),
JSON lines on a pipe, and what `--events` forces. Real restic; the engine does not matter
here, so one version is enough."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import _FOREIGN

RESTIC = shutil.which("restic")
PASSWORD = "terminal test password"
# The date, the time, the level padded to "warning", the backup→repository, the message.
LINE = r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d {level} +docs→local: {message}"


def write_config(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("hello\n")
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"""
        [daemon]
        restic = "{RESTIC}"

        [repositories.local]
        location = "{tmp_path / "repository"}"
        password = "{PASSWORD}"

        [backups.docs]
        paths = ["{data}"]
        repositories = ["local"]
        """
    )
    return config


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CACHE_DIRECTORY": str(tmp_path / "cache")}
    for name in ("HENBACKUP_EVENTS", "NO_COLOR", "JOURNAL_STREAM"):
        env.pop(name, None)
    return env | extra


def backup(tmp_path: Path, *options: str, terminal: bool, **extra: str) -> tuple[int, str]:
    """Run `henbackup [OPTIONS] backup docs` with stderr on a pty or a pipe; returns its exit
    status and what it wrote on stderr."""
    command = [sys.executable, "-m", "henbackup.cli.daemon"]
    command += ["--config", str(write_config(tmp_path)), *options, "backup", "docs"]
    env = environment(tmp_path, **extra)
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        return done.returncode, done.stderr
    leader, follower = os.openpty()
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL, env=env
    ) as process:
        os.close(follower)
        shown = b""
        while True:  # read as it comes: a full pty would block the writer
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        os.close(leader)
        status = process.wait(timeout=120)
    return status, shown.decode().replace("\r\n", "\n")


def test_on_a_terminal_one_readable_line_per_event(tmp_path: Path) -> None:
    status, shown = backup(tmp_path, terminal=True, TERM="dumb")
    assert status == 0, shown
    # The repository is made by this first backup: restic says so when it meets none.
    started, initialised, *progress, succeeded = shown.splitlines()  # progress: as restic
    assert re.fullmatch(LINE.format(level="info", message="backup started"), started)
    made = "repository local did not exist: initialised"
    assert re.fullmatch(LINE.format(level="notice", message=made), initialised)
    for line in progress:
        assert re.fullmatch(LINE.format(level="info", message=r"backup \d+(\.\d)?%"), line)
    done = LINE.format(level="info", message="backup succeeded: snapshot [0-9a-f]{8}")
    assert re.fullmatch(done, succeeded)
    assert PASSWORD not in shown


@pytest.mark.parametrize(
    ("extra", "level"),
    [
        ({"TERM": "xterm-256color"}, "\x1b\\[31merror\x1b\\[0m"),
        ({"TERM": "xterm-256color", "NO_COLOR": "1"}, "error"),
        ({"TERM": "dumb"}, "error"),
    ],
)
def test_colour_only_where_the_terminal_supports_it(
    tmp_path: Path, extra: dict[str, str], level: str
) -> None:
    tmp_path.joinpath("repository").write_text("a file where the repository should be")
    status, shown = backup(tmp_path, terminal=True, **extra)
    assert status == 1, shown
    failed = LINE.format(level=level, message="backup failed: .+")
    assert any(re.fullmatch(failed, line) for line in shown.splitlines()), shown
    assert ("\x1b[" in shown) is ("NO_COLOR" not in extra and extra["TERM"] != "dumb")


def test_on_a_pipe_json_lines(tmp_path: Path) -> None:
    status, shown = backup(tmp_path, terminal=False, TERM="xterm")
    assert status == 0, shown
    events = [json.loads(line) for line in shown.splitlines()]
    kinds = [event["HENBACKUP_EVENT"] for event in events]
    kinds = [kind for kind in kinds if kind != "job.progress"]  # as fast as restic is
    assert kinds == ["job.started", "repository.initialized", "job.succeeded"]
    assert events[0]["MESSAGE"] == "docs→local: backup started"
    assert events[-1]["HENBACKUP_REPOSITORY"] == "local"


@pytest.mark.parametrize("terminal", [True, False])
def test_events_json_forces_json_lines(tmp_path: Path, terminal: bool) -> None:
    status, shown = backup(tmp_path, "--events", "json", terminal=terminal, TERM="xterm")
    assert status == 0, shown
    kinds = [json.loads(line)["HENBACKUP_EVENT"] for line in shown.splitlines()]
    assert "job.succeeded" in kinds


@pytest.mark.parametrize("terminal", [True, False])
def test_events_text_forces_readable_lines(tmp_path: Path, terminal: bool) -> None:
    status, shown = backup(tmp_path, "--events", "text", terminal=terminal, TERM="dumb")
    assert status == 0, shown
    started = LINE.format(level="info", message="backup started")
    assert any(re.fullmatch(started, line) for line in shown.splitlines()), shown


def test_the_variable_forces_a_sink_and_a_bad_one_is_named(tmp_path: Path) -> None:
    status, shown = backup(tmp_path, terminal=True, HENBACKUP_EVENTS="json", TERM="dumb")
    assert status == 0, shown
    assert json.loads(shown.splitlines()[0])["HENBACKUP_EVENT"] == "job.started"
    status, shown = backup(tmp_path / "bad", terminal=False, HENBACKUP_EVENTS="xml")
    assert (status, shown) == (
        2,
        "henbackup: HENBACKUP_EVENTS='xml' is not one of json, text, journal (or use --events)\n",
    )


def test_the_demo_on_a_terminal_master_workers_and_jobs_print_readable_lines(
    tmp_path: Path,
) -> None:
    """`make demo`'s command (etc/demo.toml, `henbackup run`) with stderr on a pty."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hello.txt").write_text("hello from henbackup\n")
    dirs = {name: tmp_path / name for name in ("state", "cache", "run")}
    for directory in dirs.values():
        directory.mkdir()
    env = environment(
        tmp_path,
        TERM="dumb",
        HENBACKUP_DEMO=str(tmp_path),
        STATE_DIRECTORY=str(dirs["state"]),
        CACHE_DIRECTORY=str(dirs["cache"]),
        RUNTIME_DIRECTORY=str(dirs["run"]),
    )
    for name in _FOREIGN:
        env.pop(name, None)
    demo = Path(__file__).parents[2] / "etc" / "demo.toml"
    leader, follower = os.openpty()
    os.set_blocking(leader, False)
    shown = b""

    def has(pattern: str) -> bool:
        nonlocal shown
        # Nothing more for now (BlockingIOError), or every writer is gone (EIO).
        with contextlib.suppress(OSError):
            while chunk := os.read(leader, 65536):
                shown += chunk
        text = shown.decode(errors="replace").replace("\r\n", "\n")
        return any(re.fullmatch(pattern, line) for line in text.splitlines())

    command = [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(demo), "run"]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower, env=env
    )
    os.close(follower)
    try:
        stamp = r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d "
        wait_until(lambda: has(stamp + r"notice  henbackup started: .+"), 60, shown)
        succeeded = stamp + r"info    demo→demo-local: backup succeeded: snapshot [0-9a-f]{8}"
        wait_until(lambda: has(succeeded), 120, shown)  # from a job process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        wait_until(lambda: has(stamp + r"notice  henbackup stopping"), 10, shown)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    assert b'{"' not in shown, shown  # not one JSON line


def wait_until(predicate: Callable[[], bool], timeout: float, shown: bytes) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, shown.decode(errors="replace")
        time.sleep(0.1)
