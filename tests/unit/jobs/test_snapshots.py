"""What a `henbackupctl list-snapshots` reply tells of the snapshot counts (the metric
henbackup_snapshots, reconciled by every listing)."""

from __future__ import annotations

from pathlib import Path

from henbackup.config.load import load_config
from henbackup.jobs.snapshots import snapshot_counts

CONFIG = """
[repositories.aws]
location = "/srv/aws"
password = "x"
[repositories.ovh]
location = "/srv/ovh"
password = "x"
[backups.pictures]
paths = ["/p"]
repositories = ["aws", "ovh"]
[backups.music]
paths = ["/m"]
repositories = ["aws"]
"""


def row(backup: str | None, repository: str, host: str = "testhost") -> dict[str, object]:
    return {"backup": backup, "repository": repository, "host": host}


def test_a_listing_counts_each_backups_snapshots_of_this_host(tmp_path: Path) -> None:
    path = tmp_path / "henbackup.toml"
    path.write_text(CONFIG)
    config = load_config(path, env={}, hostname="testhost")
    rows = [
        row("pictures", "aws"),
        row("pictures", "aws"),
        row("pictures", "aws", host="laptop"),  # retention and the metric: this host's only
        row(None, "aws"),  # made by hand, no backup tag
        row("pictures", "ovh"),
    ]
    request = {"command": "list-snapshots", "repositories": ["aws", "ovh"], "backup": None}
    reply = {"ok": True, "snapshots": rows, "errors": []}
    assert snapshot_counts(config, request, reply) == {
        ("aws", "pictures"): 2,
        ("ovh", "pictures"): 1,
        ("aws", "music"): 0,
    }
    failed = {**reply, "errors": ["ovh: wrong password for repository ovh"]}
    assert snapshot_counts(config, request, failed) == {("aws", "pictures"): 2, ("aws", "music"): 0}
    one = {**request, "backup": "pictures", "repositories": ["aws"]}
    assert snapshot_counts(config, one, reply) == {("aws", "pictures"): 2}
