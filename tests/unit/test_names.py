"""The names one backup goes by: each as users and restic see it."""

from __future__ import annotations

from henbackup import names


def test_a_backup_s_names():
    assert names.worker_key("backup", "pictures") == "backup:pictures"
    assert names.worker_key("repository", "aws") == "repository:aws"
    assert names.worker_title("pictures") == "hb:pictures"
    assert names.job_title("pictures") == "hbjob:pictures"
    assert names.backup_record("pictures") == "backups/pictures.json"
    assert names.maintenance_record("aws", "check") == "repositories/aws/check.json"
    assert names.snapshot_tag("pictures") == "backup-pictures"


def test_a_snapshot_tag_names_its_backup_back():
    assert names.tagged_backup(names.snapshot_tag("my pictures")) == "my pictures"
    assert names.tagged_backup("manual") is None


def test_a_record_name_is_one_file_name():
    assert names.backup_record("a/b") == "backups/a%2Fb.json"
    assert names.backup_record("..") == "backups/..%.json"
