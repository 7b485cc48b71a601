"""Bandwidth: a job's own limit, the host budget's share, the repository's cap."""

from pathlib import Path

import pytest

from henbackup.config.load import load_config
from henbackup.jobs.targets import target_for
from henbackup.limits.budget import job_limit, share


@pytest.mark.parametrize(
    ("own", "budget_share", "cap", "expected"),
    [
        (None, None, None, None),
        (None, 100, None, 100),  # the host's share applies
        (50, 100, None, 50),  # a job may ask for less than its share
        (500, 100, None, 100),  # never more: the budget holds
        (500, 100, 200, 100),
        (None, None, 200, 200),  # never above the repository's cap
        (None, 300, 200, 200),
        (150, None, 200, 150),
    ],
)
def test_job_limit(own, budget_share, cap, expected):
    assert job_limit(own, budget_share, cap) == expected


def test_the_budget_is_split_among_the_slots():
    assert share(4 << 20, 2) == 2 << 20
    assert share(100, 3) == 33  # rounded down: three jobs never add up to more than 100
    assert share(None, 2) is None


def test_the_jobs_that_can_run_at_once_never_add_up_to_more_than_the_budget(tmp_path: Path):
    path = tmp_path / "henbackup.toml"
    path.write_text(
        '[daemon]\nmax_concurrent_jobs = 3\nupload_limit = "3M"\ndownload_limit = "1M"\n'
        '[repositories.r]\nlocation = "/srv/r"\npassword = "x"\n'
        '[repositories.capped]\nlocation = "/srv/c"\npassword = "x"\nupload_limit = "256K"\n'
        '[backups.greedy]\npaths = ["/a"]\nrepositories = ["r", "capped"]\nupload_limit = "5M"\n'
        '[backups.modest]\npaths = ["/b"]\nrepositories = ["r"]\nupload_limit = "100K"\n'
    )
    config = load_config(path)
    greedy, modest = config.backups["greedy"], config.backups["modest"]
    repository, capped = config.repositories["r"], config.repositories["capped"]
    assert target_for(config, repository, greedy).upload_limit == 1 << 20  # 3M / 3 slots
    assert target_for(config, capped, greedy).upload_limit == 256 << 10
    assert target_for(config, repository, modest).upload_limit == 100 << 10
    assert target_for(config, repository).upload_limit == 1 << 20  # a check or prune
    assert target_for(config, repository, greedy).download_limit == (1 << 20) // 3
