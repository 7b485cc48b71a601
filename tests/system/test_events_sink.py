"""`henbackup --events journal` against a real journald: the events reach the journal with
their fields and nothing reaches stderr, though stderr is a pipe (which alone means JSON)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_service import backup as backup_table
from test_service import repository
from user_manager import SystemdHarness

RESTIC = shutil.which("restic")  # the engine does not matter here


def write_config(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello\n")
    config = tmp_path / "henbackup.toml"
    daemon = f'[daemon]\nrestic = "{RESTIC}"\n'
    config.write_text(daemon + repository("local", tmp_path) + backup_table("docs", data, "local"))
    return config


def backup(
    harness: SystemdHarness, tmp_path: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """`henbackup [OPTIONS] backup docs` inside the namespace, stdout and stderr on pipes."""
    config = write_config(tmp_path)
    command = [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(config)]
    return harness.run(
        [*command, *options, "backup", "docs"],
        env={"CACHE_DIRECTORY": str(tmp_path / "cache")},
        timeout=120,
    )


def test_events_journal_sends_every_field_to_journald(
    systemd_harness: SystemdHarness, tmp_path: Path
) -> None:
    done = backup(systemd_harness, tmp_path, "--events", "journal")
    assert (done.returncode, done.stderr) == (0, "")
    snapshot = re.fullmatch(r"docs → local: snapshot ([0-9a-f]{8})\n", done.stdout)
    assert snapshot, done.stdout
    (entry,) = systemd_harness.wait_journal({"HENBACKUP_EVENT": "job.succeeded"})
    assert entry["MESSAGE"] == f"docs→local: backup succeeded: snapshot {snapshot[1]}"
    assert entry["MESSAGE_ID"] == "46f20b6b5f294b549fbcca0d0183a6c3"
    assert (entry["PRIORITY"], entry["SYSLOG_IDENTIFIER"]) == ("6", "henbackup")
    fields = ("BACKUP", "REPOSITORY", "OPERATION", "TRIGGER", "SNAPSHOT")
    assert {name: entry[f"HENBACKUP_{name}"] for name in fields} == {
        "BACKUP": "docs",
        "REPOSITORY": "local",
        "OPERATION": "backup",
        "TRIGGER": "manual",
        "SNAPSHOT": snapshot[1],
    }


@pytest.mark.parametrize("options", [(), ("--events", "json")])
def test_on_a_pipe_json_and_not_the_journal_though_journald_runs(
    systemd_harness: SystemdHarness, tmp_path: Path, options: tuple[str, ...]
) -> None:
    done = backup(systemd_harness, tmp_path, *options)
    assert done.returncode == 0, done.stderr
    kinds = [json.loads(line)["HENBACKUP_EVENT"] for line in done.stderr.splitlines()]
    assert kinds[0] == "job.started" and kinds[-1] == "job.succeeded", kinds
    assert systemd_harness.journal({"SYSLOG_IDENTIFIER": "henbackup"}) == []
