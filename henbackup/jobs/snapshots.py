"""Listing the snapshots of one repository (optionally of one backup)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from henbackup.config.model import Config
from henbackup.engine.base import Engine, Snapshot
from henbackup.jobs.job import Job, run_job
from henbackup.jobs.targets import target_for
from henbackup.observe.events import EmitFunction, FieldValue


def run_snapshots(job: Job, config: Config, engine: Engine, emit: EmitFunction) -> list[Snapshot]:
    """The snapshots in `job.repository` (of `job.backup` only, if set), newest first."""
    target = target_for(config, config.repositories[job.repository])

    def work() -> list[Snapshot]:
        # Engines list oldest first, and borg's times are whole seconds (its list breaks a
        # tie finer): reversed after a stable sort, a tie is newest first too.
        found = sorted(engine.snapshots(target, job.backup), key=lambda s: s.time)
        return found[::-1]

    return run_job(job, emit, work, _outcome, engine)


def _outcome(snapshots: list[Snapshot]) -> tuple[str, dict[str, FieldValue]]:
    return f": {len(snapshots)} snapshots", {}


def snapshot_row(snapshot: Snapshot, repository: str) -> dict[str, object]:
    """One snapshot as `henbackupctl list-snapshots --json` prints it."""
    return {
        "id": snapshot.id,
        "short_id": snapshot.short_id,
        "time": snapshot.time.isoformat(),
        "backup": snapshot.backup,
        "repository": repository,
        "host": snapshot.host,
        "paths": list(snapshot.paths),
        "tags": list(snapshot.tags),
        "bytes_added": snapshot.bytes_added,
    }


def snapshot_counts(
    config: Config, request: Mapping[str, Any], reply: Mapping[str, Any]
) -> dict[tuple[str, str], int]:
    """How many snapshots each backup made on this host has in each repository, by
    (repository, backup), as a list-snapshots `reply` to `request` tells (the metric
    henbackup_snapshots). Only what it listed whole counts: not a repository that failed,
    nor other backups than the one asked for."""
    failed = {str(error).split(": ", 1)[0] for error in reply.get("errors") or ()}
    found: dict[tuple[str, str], int] = {}
    for row in reply.get("snapshots") or ():
        if isinstance(row, dict) and row.get("host") == config.daemon.hostname:
            key = (str(row.get("repository")), str(row.get("backup")))
            found[key] = found.get(key, 0) + 1
    asked = request.get("backup")
    return {
        (repository, backup.name): found.get((repository, backup.name), 0)
        for backup in config.backups.values()
        if asked in (None, backup.name)
        for repository in backup.repositories
        if repository in request.get("repositories", ()) and repository not in failed
    }
