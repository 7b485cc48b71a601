"""The control socket handed over by systemd (socket activation, sd_listen_fds).

`systemd-socket-activate` (systemd's own tool) listens, starts the daemon on the first
connection with LISTEN_FDS/LISTEN_PID set, exactly as a .socket unit would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from henbackup.master.control import socket_from_systemd

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


def activation_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))},
        "RUNTIME_DIRECTORY": str(tmp_path / "run"),
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "CACHE_DIRECTORY": str(tmp_path / "cache"),
        "HENBACKUP_EVENTS": "stderr",
    }


def activator_command(tmp_path: Path, *options: str) -> list[str]:
    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate (package systemd) is missing"
    config = tmp_path / "henbackup.toml"
    config.write_text(CONFIG.format(base=tmp_path))
    daemon = [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(config), "run"]
    return [activate, *options, "-l", str(tmp_path / "activated.sock"), *daemon]


def wait_for_listener(socket_path: Path) -> None:
    deadline = time.monotonic() + 10
    while not socket_path.exists():  # the activator's own listen(), before any daemon
        assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
        time.sleep(0.02)


def test_the_daemon_serves_the_socket_systemd_hands_over(tmp_path: Path) -> None:
    socket_path = tmp_path / "activated.sock"
    activator = subprocess.Popen(
        activator_command(tmp_path),
        env=activation_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_listener(socket_path)
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


def test_a_socket_that_is_not_a_unix_stream_one_stops_the_daemon_with_one_line(
    tmp_path: Path,
) -> None:
    socket_path = tmp_path / "activated.sock"
    activator = subprocess.Popen(
        activator_command(tmp_path, "--datagram"),
        env=activation_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_listener(socket_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"wake up", str(socket_path))  # a datagram socket starts on one
        _, stderr = activator.communicate(timeout=60)
    finally:
        activator.kill()
        activator.wait()
    assert activator.returncode == 1, stderr
    assert stderr.splitlines()[-1] == (
        "LISTEN_FDS: the socket systemd passed is not a listening unix stream socket:"
        " give the .socket unit a ListenStream= path"
    )


def test_a_socket_passed_to_another_process_is_not_taken(monkeypatch) -> None:
    """In process: LISTEN_PID names our parent (a socket meant for it leaked to us)."""
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "control")
    assert socket_from_systemd() is None
    # Not passed on to our children either.
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)
