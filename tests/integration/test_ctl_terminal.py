"""What a person sees: `henbackupctl backup` on a terminal (a real pseudo-terminal) draws a
progress bar in place between the steps of the job, and ends with the job's result."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import Daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """
[daemon]
restic = "{restic}"

[repositories.local]
location = "{base}/repository"
password = "terminal: a test password"

[backups.pictures]
paths = ["{base}/data"]
repositories = ["local"]
upload_limit = "2M"
"""
BAR = re.compile(r"\r\x1b\[Kpictures→local  \[[#-]{24}\]  +\d+%")


def read_terminal(daemon: Daemon, client: subprocess.Popen[bytes], terminal: int) -> str:
    """Everything the client wrote to its terminal until it exited (the daemon's events are
    read meanwhile, so that it never blocks on a full pipe)."""
    output, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        daemon.pump(0.05)
        try:
            while select.select([terminal], [], [], 0)[0]:
                chunk = os.read(terminal, 65536)
                if not chunk:
                    raise EOFError
                output += chunk
        except (OSError, EOFError):  # EIO: every writer of the terminal has gone
            if client.poll() is not None:
                return output.decode()
    raise AssertionError(f"the client did not end; it wrote {output!r}")


def test_a_backup_on_a_terminal_shows_its_progress_and_its_result(
    restic: str, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(os.urandom(10 * 1024 * 1024))
    config = tmp_path / "henbackup.toml"
    config.write_text(CONFIG.format(restic=restic, base=tmp_path))
    with Daemon(config, tmp_path) as daemon:
        daemon.wait_for("daemon.started")
        controller, terminal = os.openpty()
        ctl = [sys.executable, "-m", "henbackup.cli.ctl", "--socket", str(daemon.socket)]
        client = subprocess.Popen(
            [*ctl, "backup", "pictures"], stdin=terminal, stdout=terminal, stderr=terminal
        )
        os.close(terminal)
        try:
            output = read_terminal(daemon, client, controller)
        finally:
            os.close(controller)
    assert client.returncode == 0, output
    assert BAR.search(output), f"no progress bar in {output!r}"
    # Step lines each start on a clean line: the bar is wiped before one is printed.
    steps = [line.split("\r\x1b[K")[-1] for line in output.split("\r\n") if line]
    started = steps.index("pictures→local: backup started")
    assert re.fullmatch(r"pictures→local: backup succeeded: snapshot [0-9a-f]{8}", steps[-1])
    assert started < len(steps) - 1
    assert output.endswith("\r\n")  # the terminal is left on a fresh line, no bar behind
