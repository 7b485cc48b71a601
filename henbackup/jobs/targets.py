"""From configuration to what the engine needs for one job on one repository."""

from __future__ import annotations

from henbackup.config.model import Backup, Config, Repository
from henbackup.engine.base import Target


def effective_limit(job: int | None, default: int | None, cap: int | None) -> int | None:
    """The job's own limit (else the daemon default), never above the repository's cap."""
    wanted = job if job is not None else default
    if wanted is None:
        return cap
    return wanted if cap is None else min(wanted, cap)


def target_for(config: Config, repository: Repository, backup: Backup | None = None) -> Target:
    """The engine's view of `repository` for a job of `backup` (None: a repository job)."""
    daemon = config.daemon
    return Target(
        name=repository.name,
        location=repository.location,
        password=repository.password,
        env=repository.env,
        options=repository.options,
        upload_limit=effective_limit(
            backup.upload_limit if backup else None, daemon.upload_limit, repository.upload_limit
        ),
        download_limit=effective_limit(
            backup.download_limit if backup else None,
            daemon.download_limit,
            repository.download_limit,
        ),
    )
