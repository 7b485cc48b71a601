"""The daemon's story on a borg repository, end to end: one backup sent to a restic and a
borg repository at once through `henbackupctl backup`, listed, restored byte for byte from
borg, checked and pruned there; the same events and replies as for restic."""

from __future__ import annotations

import shutil
from pathlib import Path

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
    toml,
    tree_state,
)
from daemon_helpers import Daemon

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
