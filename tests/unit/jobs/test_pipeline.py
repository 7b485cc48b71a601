"""One trigger of a backup, its hooks around its jobs: what a stopping before hook does."""

from __future__ import annotations

from typing import cast

import pytest

from henbackup.config.load import load_config
from henbackup.engine.base import Engine
from henbackup.errors import StopRequested
from henbackup.jobs.pipeline import RepositoryOutcome, run_backup_pipeline
from henbackup.process import SafePoint

CONFIG = """
[repositories.local]
location = "/nowhere/local"
password = "unused"

[repositories.remote]
location = "/nowhere/remote"
password = "unused"

[backups.grafana]
paths = ["/nowhere/data"]
repositories = ["local", "remote"]

[[backups.grafana.hooks.before]]
type = "command"
command = ["false"]
on_failure = "%s"
"""


def pipeline(tmp_path, on_failure, events):
    path = tmp_path / "henbackup.toml"
    path.write_text(CONFIG % on_failure)
    config = load_config(path, env={}, hostname="testhost")
    no_engine = cast(Engine, object())  # a stopped run never gets as far as restic
    return run_backup_pipeline(config, "grafana", no_engine, events, "schedule")


def test_a_before_hook_that_stops_the_run_fails_each_of_its_jobs(tmp_path, events):
    result = pipeline(tmp_path, "stop", events)
    error = "before hook command false: exited with status 1"
    assert result.status == "failed"
    assert result.outcomes == (
        RepositoryOutcome("local", error=error),
        RepositoryOutcome("remote", error=error),
    )
    failed = [dict(e.fields) for e in events.recorded if e.kind == "job.failed"]
    assert [(f["HENBACKUP_REPOSITORY"], f["HENBACKUP_ERROR"]) for f in failed] == [
        ("local", error),
        ("remote", error),
    ]
    assert {f["HENBACKUP_TRIGGER"] for f in failed} == {"schedule"}
    assert [e.kind for e in events.recorded if e.kind.startswith("job.")] == ["job.failed"] * 2


def test_a_stop_recorded_before_a_repository_starts_ends_the_run_there(tmp_path, events):
    """The pipeline checks the job's safe point before each repository: a stop that came
    after the hooks (or the previous repository) starts nothing more."""
    path = tmp_path / "henbackup.toml"
    path.write_text(CONFIG % "continue")  # the hook fails, the jobs would run
    config = load_config(path, env={}, hostname="testhost")
    checked = []

    def stopped() -> None:
        checked.append(True)
        raise StopRequested("stopped by SIGTERM")

    no_engine = cast(Engine, object())  # never reached
    with pytest.raises(StopRequested):
        run_backup_pipeline(
            config, "grafana", no_engine, events, "schedule", safe_point=SafePoint(stopped)
        )
    assert checked == [True]
    assert [e.kind for e in events.recorded if e.kind.startswith("job.")] == []
