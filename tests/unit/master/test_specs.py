"""Which workers a reload restarts: exactly those whose definition changed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from henbackup.config.load import load_config
from henbackup.config.model import Config
from henbackup.master.specs import diff, worker_specs

CONFIG = """
[repositories.local]
location = "{tmp}/repo"
password = "secret"
check = {{ schedule = ["1w"] }}

[backups.pictures]
paths = ["{tmp}"]
repositories = ["local"]
schedule = ["1d"]
"""
EVERY_WORKER = ("backup:pictures", "repository:local")


def config(tmp_path: Path) -> Config:
    path = tmp_path / "henbackup.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    return load_config(path, env={}, hostname="testhost")


def changed(before: Config, **daemon: object) -> tuple[str, ...]:
    after = replace(before, daemon=replace(before.daemon, **daemon))
    return diff(worker_specs(before), worker_specs(after)).changed


def test_daemon_settings_no_job_reads_restart_no_worker(tmp_path: Path) -> None:
    """Before, any [daemon] key restarted every worker, interrupting every running job:
    preempt_after is the master's alone, and without a host-wide limit max_concurrent_jobs
    shares nothing out."""
    before = config(tmp_path)
    assert changed(before, preempt_after=60.0) == ()
    assert changed(before, max_concurrent_jobs=4) == ()


def test_daemon_settings_jobs_read_restart_every_worker(tmp_path: Path) -> None:
    before = config(tmp_path)
    assert changed(before, stall_timeout=60.0) == EVERY_WORKER
    assert changed(before, restic="/opt/restic") == EVERY_WORKER
    assert changed(before, upload_limit=1 << 20) == EVERY_WORKER
    limited = replace(before, daemon=replace(before.daemon, upload_limit=1 << 20))
    assert changed(limited, max_concurrent_jobs=4) == EVERY_WORKER  # each job's share of it
