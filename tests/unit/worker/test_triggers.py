"""A watched backup's start: changes seen before the daemon stopped run it once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from henbackup.config.load import load_config
from henbackup.loop import Loop
from henbackup.names import backup_record
from henbackup.worker.state import ScheduleRecord, StateStore
from henbackup.worker.triggers import backup_triggers

DAY = 86400.0


@pytest.mark.parametrize(
    ("changed", "runs"),
    [
        (-10.0, ["startup"]),  # seen after the last success: not in any snapshot yet
        (-200.0, []),  # before it: saved by it
        (30 * DAY, []),  # written by a wrong clock: before, every start ran the backup
    ],
)
def test_changes_seen_before_a_stop_run_the_backup_once_unless_a_wrong_clock_wrote_them(
    tmp_path: Path, changed: float, runs: list[str]
) -> None:
    path = tmp_path / "henbackup.toml"
    path.write_text(
        f'[repositories.r]\nlocation = "{tmp_path}/repo"\npassword = "pw"\n'
        f'[backups.b]\npaths = ["{tmp_path}"]\nrepositories = ["r"]\nwatch = true\n'
    )
    config = load_config(path, env={}, hostname="testhost")
    now = time.time()
    record = ScheduleRecord(
        last_success=now - 100, last_attempt=now - 100, changed_since=now + changed
    )
    StateStore(tmp_path / "state", pytest.fail).save(backup_record("b"), record)
    requested: list[str] = []
    loop = Loop()
    try:
        triggers = backup_triggers(
            config.backups["b"],
            loop,
            tmp_path / "state",
            lambda *args, **fields: None,
            lambda trigger, reason, operation: requested.append(trigger),
        )
        triggers.start()
        assert requested == runs
    finally:
        loop.close()
