"""The control socket handed over by systemd (socket activation, sd_listen_fds).

`systemd-socket-activate` (systemd's own tool) listens, starts the daemon on the first
connection with LISTEN_FDS/LISTEN_PID set, exactly as a .socket unit would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CONFIG = """
[repositories.local]
location = "{base}/repository"
password = "activation: a test password"

[backups.pictures]
paths = ["{base}/data"]
repositories = ["local"]
schedule = ["1w"]
"""


def test_the_daemon_serves_the_socket_systemd_hands_over(tmp_path: Path) -> None:
    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate (package systemd) is missing"
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    config = tmp_path / "henbackup.toml"
    config.write_text(CONFIG.format(base=tmp_path))
    socket_path = tmp_path / "activated.sock"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))},
        "RUNTIME_DIRECTORY": str(tmp_path / "run"),
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "CACHE_DIRECTORY": str(tmp_path / "cache"),
        "HENBACKUP_EVENTS": "stderr",
    }
    daemon = [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(config), "run"]
    activator = subprocess.Popen(
        [activate, "-l", str(socket_path), *daemon],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():  # the activator's own listen(), before any daemon
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.02)
        ctl = [sys.executable, "-m", "henbackup.cli.ctl", "--socket", str(socket_path)]
        status = subprocess.run(
            [*ctl, "--json", "status"], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert [b["name"] for b in json.loads(status.stdout)["backups"]] == ["pictures"]
        # It used the socket it was given: it bound none of its own.
        assert not (tmp_path / "run" / "control.sock").exists()
    finally:
        activator.terminate()
        assert activator.wait(timeout=30) == 0
