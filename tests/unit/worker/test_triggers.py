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


def watched_triggers(tmp_path: Path, loop: Loop, requested: list, schedule: str = ""):
    path = tmp_path / "henbackup.toml"
    path.write_text(
        f'[repositories.r]\nlocation = "{tmp_path}/repo"\npassword = "pw"\n'
        f'[backups.b]\npaths = ["{tmp_path}"]\nrepositories = ["r"]\nwatch = true\n{schedule}'
    )
    config = load_config(path, env={}, hostname="testhost")
    return backup_triggers(
        config.backups["b"],
        loop,
        tmp_path / "state",
        lambda *args, **fields: None,
        lambda trigger, reason, operation: requested.append((trigger, reason)),
    )


def serve(loop: Loop, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        guard = loop.call_later(0.02, lambda: None)
        loop.run_once()
        guard.cancel()


@pytest.mark.parametrize(
    ("ok", "schedule", "tries"),
    [
        (False, "", [("watch", "its last run failed, and changes are still unsaved")]),
        (True, "", []),
        (False, 'schedule = ["1d"]\n', []),  # its schedule retries it (schedule.py)
    ],
)
def test_a_failed_watched_backup_is_tried_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ok: bool, schedule: str, tries: list
) -> None:
    """Before, a watch-only backup that failed (its NAS away a minute) left its changes
    unsaved until another file changed; a restart would have run it at once."""
    monkeypatch.setattr("henbackup.worker.triggers.RETRY_AFTER", 0.1)
    requested: list[tuple[str, str]] = []
    loop = Loop()
    try:
        triggers = watched_triggers(tmp_path, loop, requested, schedule)
        triggers.watch_news(3, False, None)
        triggers.job_started("backup")
        triggers.job_finished("backup", ok)
        serve(loop, 0.5)
        assert [r for r in requested if r[0] == "watch"] == tries
    finally:
        loop.close()


def test_lost_events_alone_are_remembered_across_a_restart(tmp_path: Path) -> None:
    """A watcher restarted, a watch back after a limit, a mount: no count, yet changes."""
    requested: list[tuple[str, str]] = []
    loop = Loop()
    try:
        watched_triggers(tmp_path, loop, requested).watch_news(0, True, None)
        record = StateStore(tmp_path / "state", pytest.fail).load(backup_record("b"))
        assert record.unsaved_changes
    finally:
        loop.close()
