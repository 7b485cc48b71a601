"""From configuration to what the engine needs for one job on one repository."""

from __future__ import annotations

from henbackup.config.model import Backup, Config, Repository
from henbackup.engine.base import Target
from henbackup.limits.budget import job_limit, share


def target_for(config: Config, repository: Repository, backup: Backup | None = None) -> Target:
    """The engine's view of `repository` for a job of `backup` (None: a repository job)."""
    daemon = config.daemon
    return Target(
        name=repository.name,
        location=repository.location,
        password=repository.password,
        engine=repository.engine,
        env=repository.env,
        env_file=repository.env_file,
        env_credentials=repository.env_credentials,
        options=repository.options,
        upload_limit=job_limit(
            backup.upload_limit if backup else None,
            share(daemon.upload_limit, daemon.max_concurrent_jobs),
            repository.upload_limit,
        ),
        download_limit=job_limit(
            backup.download_limit if backup else None,
            share(daemon.download_limit, daemon.max_concurrent_jobs),
            repository.download_limit,
        ),
    )
