"""The daemon's stories on a borg repository, end to end: one backup sent to a restic and a
borg repository at once through `henbackupctl backup`, listed, restored byte for byte from
borg, checked and pruned there; a change watched and backed up between its hooks; the queue
(two backups asked while a big one runs, the superior one first) with the big one's progress
against its total. The same events and replies as for restic."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import ctl_schemas
import pytest
from ctl_helpers import (
    HOST,
    ONE_RESTIC,
    PASSWORD,
    ctl,
    make_tree,
    reply,
    restored,
    said,
    status_row,
    toml,
    tree_state,
)
from daemon_helpers import Daemon, write_state
from test_queue_story import request, row, wait_queue, waiting
from test_restic_engine import sparse_file

from henbackup.humanize import size

pytestmark = [pytest.mark.integration, pytest.mark.slow, ONE_RESTIC]

BORG = shutil.which("borg") or "borg"


def mixed_config(base: Path, restic: str, data: Path) -> Path:
    """One backup, `pictures`, to a restic repository and a borg one (created on first use)."""
    text = f"""
[daemon]
restic = {toml(restic)}
borg = {toml(BORG)}
hostname = {toml(HOST)}

[repositories.restic-local]
location = {toml(str(base / "restic-repo"))}
password = {toml(PASSWORD)}

[repositories.borg-local]
engine = "borg"
location = {toml(str(base / "borg-repo"))}
password = {toml(PASSWORD)}

[backups.pictures]
paths = [{toml(str(data))}]
repositories = ["restic-local", "borg-local"]
retention = {{ keep_last = 1 }}
"""
    config = base / "henbackup.toml"
    config.write_text(text)
    return config


def test_a_backup_to_restic_and_borg_restored_from_borg(restic: str, tmp_path: Path) -> None:
    data = make_tree(tmp_path / "pictures")
    source = tree_state(data)
    daemon = Daemon(mixed_config(tmp_path, restic, data), tmp_path / "daemon")
    with daemon:
        daemon.wait_for("daemon.started")
        backup = ctl(daemon, "backup", "pictures")
        assert backup.returncode == 0, said(backup)
        done = {
            repository: daemon.wait_for("job.succeeded", operation="backup", repository=repository)
            for repository in ("restic-local", "borg-local")
        }
        assert (tmp_path / "borg-repo" / "config").is_file()  # borg init'ed it
        assert len(done["borg-local"]["HENBACKUP_SNAPSHOT"]) == 64

        listed = ctl(daemon, "--json", "list-snapshots", "borg-local")
        assert listed.returncode == 0, said(listed)
        answer = reply(listed)
        ctl_schemas.validate(answer, ctl_schemas.LIST_SNAPSHOTS)
        (row,) = answer["snapshots"]
        assert row["id"] == done["borg-local"]["HENBACKUP_SNAPSHOT"]
        assert (row["backup"], row["host"], row["paths"]) == ("pictures", HOST, [str(data)])
        assert row["tags"] == ["backup-pictures"]

        target = tmp_path / "restored"
        got = ctl(
            daemon, "restore-snapshot", "borg-local", row["short_id"], "--target", str(target)
        )
        assert (got.returncode, got.stderr) == (0, ""), said(got)
        assert tree_state(restored(target, data)) == source

        second = ctl(daemon, "backup", "pictures", "--repository", "borg-local")
        assert second.returncode == 0, said(second)
        for verb in ("check", "prune"):
            call = ctl(daemon, verb, "borg-local")
            assert call.returncode == 0, said(call)
        left = reply(ctl(daemon, "--json", "list-snapshots", "borg-local"))["snapshots"]
        assert len(left) == 1 and left[0]["id"] != row["id"]  # keep_last = 1 applied


def test_a_change_backs_up_to_borg_between_hooks(restic: str, tmp_path: Path) -> None:
    data = make_tree(tmp_path / "pictures")
    hooked = tmp_path / "hooks.log"
    text = f"""
[daemon]
restic = {toml(restic)}
borg = {toml(BORG)}
hostname = {toml(HOST)}

[repositories.borg-local]
engine = "borg"
location = {toml(str(tmp_path / "borg-repo"))}
password = {toml(PASSWORD)}

[backups.pictures]
paths = [{toml(str(data))}]
repositories = ["borg-local"]
schedule = ["1d"]
watch = {{ wait_min = "1s", wait_max = "4s" }}

[[backups.pictures.hooks.before]]
type = "command"
command = ["sh", "-c", "echo before >> {hooked}"]

[[backups.pictures.hooks.after]]
type = "command"
command = ["sh", "-c", "echo after >> {hooked}"]
"""
    config = tmp_path / "henbackup.toml"
    config.write_text(text)
    daemon = Daemon(config, tmp_path / "daemon")
    write_state(daemon.state, "pictures", time.time())  # nothing due: only the change counts
    with daemon:  # starts it
        daemon.wait_triggers_armed("pictures")
        mark = len(daemon.events)
        (data / "new.jpg").write_bytes(os.urandom(50_000))
        done = daemon.wait_for("job.succeeded", since=mark, operation="backup", timeout=90)
        assert (done["HENBACKUP_TRIGGER"], done["HENBACKUP_REPOSITORY"]) == (
            "watch",
            "borg-local",
        )
        daemon.wait_for("hook.succeeded", since=mark, timeout=30, hook="after")
        listed = reply(ctl(daemon, "--json", "list-snapshots", "borg-local"))["snapshots"]
        assert [row["id"] for row in listed] == [done["HENBACKUP_SNAPSHOT"]]
        target = tmp_path / "restored"
        short = listed[0]["short_id"]
        got = ctl(daemon, "restore-snapshot", "borg-local", short, "--target", str(target))
        assert got.returncode == 0, said(got)
        assert tree_state(restored(target, data)) == tree_state(data)
    assert hooked.read_text() == "before\nafter\n"


def queue_config(base: Path, restic: str, big: Path, small: Path) -> Path:
    """max_concurrent_jobs = 1; `big` to one borg repository, `ordinary` and `urgent`
    (superior) to another."""
    text = f"""
[daemon]
restic = {toml(restic)}
borg = {toml(BORG)}
hostname = {toml(HOST)}
max_concurrent_jobs = 1

[repositories.borg-big]
engine = "borg"
location = {toml(str(base / "borg-big"))}
password = {toml(PASSWORD)}

[repositories.borg-local]
engine = "borg"
location = {toml(str(base / "borg-repo"))}
password = {toml(PASSWORD)}

[backups.big]
paths = [{toml(str(big))}]
repositories = ["borg-big"]

[backups.ordinary]
paths = [{toml(str(small))}]
repositories = ["borg-local"]

[backups.urgent]
paths = [{toml(str(small))}]
repositories = ["borg-local"]
priority = "superior"
"""
    config = base / "henbackup.toml"
    config.write_text(text)
    return config


def test_two_backups_asked_while_a_big_one_runs_on_borg_superior_first(
    restic: str, tmp_path: Path
) -> None:
    big = sparse_file(tmp_path / "big" / "sparse")  # 50 GiB that borg reads for minutes
    total = big.stat().st_size
    small = make_tree(tmp_path / "small")
    daemon = Daemon(queue_config(tmp_path, restic, big.parent, small), tmp_path / "daemon")
    with daemon:
        daemon.wait_for("daemon.started")
        asked = ctl(daemon, "backup", "big", "--no-wait")
        assert asked.returncode == 0, said(asked)
        running = daemon.wait_for("job.started", backup="big")["HENBACKUP_JOB"]  # a free slot

        # its progress has the total borg's scan beside it found: a percent, the time left
        def reading() -> list[Any]:  # of the whole total, some read
            found = daemon.find("job.progress", job=running, total_bytes=str(total))
            return [event for event in found if int(event["HENBACKUP_BYTES_DONE"]) > 0]

        assert daemon.pump_until(lambda: bool(reading()), 60), daemon.report()
        progress = reading()[0]
        assert 0 <= float(progress["HENBACKUP_PERCENT"]) < 100, progress
        assert float(progress["HENBACKUP_SECONDS_REMAINING"]) > 0, progress
        status = reply(ctl(daemon, "--json", "status"))
        shown = status_row(status, "big", "borg-big")
        assert (shown["state"], shown["job"], shown["total_bytes"]) == ("running", running, total)
        assert shown["percent"] < 100 and shown["seconds_remaining"] is not None, shown
        lines = ctl(daemon, "status").stdout.splitlines()
        assert [text for text in lines if "borg-big" in text and f"/{size(total)}" in text], lines

        ordinary = request(daemon, "backup", "ordinary", backup="ordinary")
        urgent = request(daemon, "backup", "urgent", backup="urgent")
        assert (ordinary["HENBACKUP_POSITION"], urgent["HENBACKUP_POSITION"]) == ("1", "1")
        jobs = wait_queue(daemon, lambda jobs: len(waiting(jobs)) == 2)
        assert (jobs[0]["job"], jobs[0]["state"]) == (running, "running"), jobs
        assert [row(job) for job in jobs[1:]] == [
            (1, "waiting", "backup", "urgent", "superior"),
            (2, "waiting", "backup", "ordinary", "normal"),
        ]

        cancelled = ctl(daemon, "cancel", running)
        assert cancelled.returncode == 0, said(cancelled)
        daemon.wait_for("job.cancelled", timeout=60, job=running)
        ids = [urgent["HENBACKUP_JOB"], ordinary["HENBACKUP_JOB"]]
        done = [daemon.wait_for("job.succeeded", timeout=120, job=job) for job in ids]
        started = [event["HENBACKUP_JOB"] for event in daemon.find("job.started")]
        assert [job for job in started if job in ids] == ids, daemon.report()

        listed = reply(ctl(daemon, "--json", "list-snapshots", "borg-local"))["snapshots"]
        assert [(r["backup"], r["id"]) for r in listed] == [  # newest first
            ("ordinary", done[1]["HENBACKUP_SNAPSHOT"]),
            ("urgent", done[0]["HENBACKUP_SNAPSHOT"]),
        ]
        assert reply(ctl(daemon, "--json", "list-snapshots", "borg-big"))["snapshots"] == []
