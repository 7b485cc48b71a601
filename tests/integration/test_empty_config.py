"""A configuration that defines nothing (the Debian package's shipped one): the daemon runs,
idle, and its status line says what to do next."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from daemon_helpers import Daemon, henbackupctl


def on_a_terminal(daemon: Daemon, *args: str) -> str:
    """What henbackupctl prints when its standard output is a terminal."""
    ours, theirs = pty.openpty()
    command = [sys.executable, "-m", "henbackup.cli.ctl", "--socket", str(daemon.socket), *args]
    with os.fdopen(ours, "rb") as terminal:
        subprocess.run(command, stdout=theirs, check=True, timeout=30)
        os.close(theirs)
        shown = b""
        try:
            while chunk := os.read(terminal.fileno(), 1 << 16):
                shown += chunk
        except OSError:  # EIO: the terminal's other end is closed and everything was read
            pass
    return shown.decode().replace("\r\n", "\n")


def test_a_config_without_backups_runs_idle_and_the_status_says_what_to_do(tmp_path):
    config = tmp_path / "henbackup.toml"
    config.write_text("# every backup is commented out\n[daemon]\nmax_concurrent_jobs = 1\n")
    with Daemon(config, tmp_path) as daemon:
        daemon.wait_for("daemon.started", timeout=30)
        ctl = henbackupctl(daemon, "--json", "status")
        assert ctl.returncode == 0, ctl.stderr
        reply = json.loads(ctl.stdout)
        assert ctl.stdout.count("\n") == 1  # one line for a program
        shown = on_a_terminal(daemon, "--json", "status")
        assert json.loads(shown) == reply and shown.startswith('{\n  "ok": true,\n')
        assert reply["backups"] == []
        assert reply["status"] == (
            f"0 backups; idle; define a backup in {config}, "
            "then: henbackup check-config; systemctl reload henbackup"
        )
        assert daemon.stop() == 0


def test_a_notify_socket_of_an_unusable_shape_is_said_at_start(tmp_path):
    # systemd would wait in vain for READY=1: the event says why, and the daemon serves on.
    config = tmp_path / "henbackup.toml"
    config.write_text("[daemon]\nmax_concurrent_jobs = 1\n")
    with Daemon(config, tmp_path, env={"NOTIFY_SOCKET": "vsock:2:9"}) as daemon:
        error = daemon.wait_for("daemon.error", timeout=30)
        assert error["HENBACKUP_SOURCE"] == "NOTIFY_SOCKET"
        assert error["HENBACKUP_ERROR"] == (
            "NOTIFY_SOCKET='vsock:2:9' is neither a path nor an @abstract name"
        )
        assert error["MESSAGE"] == f"systemd's notifications are off: {error['HENBACKUP_ERROR']}"
        assert henbackupctl(daemon, "status").returncode == 0
        assert daemon.stop() == 0
