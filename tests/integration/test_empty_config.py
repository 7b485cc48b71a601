"""A configuration that defines nothing (the Debian package's shipped one): the daemon runs,
idle, and its status line says what to do next."""

from __future__ import annotations

import json

from daemon_helpers import Daemon, henbackupctl


def test_a_config_without_backups_runs_idle_and_the_status_says_what_to_do(tmp_path):
    config = tmp_path / "henbackup.toml"
    config.write_text("# every backup is commented out\n[daemon]\nmax_concurrent_jobs = 1\n")
    with Daemon(config, tmp_path) as daemon:
        daemon.wait_for("daemon.started", timeout=30)
        ctl = henbackupctl(daemon, "--json", "status")
        assert ctl.returncode == 0, ctl.stderr
        reply = json.loads(ctl.stdout)
        assert reply["backups"] == []
        assert reply["status"] == (
            f"0 backups; idle; define a backup in {config}, "
            "then: henbackup check-config; systemctl reload henbackup"
        )
        assert daemon.stop() == 0
