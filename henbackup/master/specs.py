"""What the master supervises: one worker per backup, one per maintained repository, and
the watcher when a backup is watched (one inotify instance for all: worker/watching.py).

A worker's `definition` holds everything it depends on, so a reload restarts exactly the
workers whose definition changed and leaves the others running, even mid-backup.
"""

from __future__ import annotations

from dataclasses import dataclass

from henbackup.config.model import Config
from henbackup.worker.spec import WorkerSpec

WATCHER = WorkerSpec("watcher", "watcher", ())


def worker_specs(config: Config) -> dict[str, WorkerSpec]:
    """Every worker `config` asks for, by key."""
    specs = [
        WorkerSpec(
            "backup",
            name,
            (backup, *(config.repositories[r] for r in backup.repositories), config.daemon),
        )
        for name, backup in config.backups.items()
    ]
    specs += [
        WorkerSpec("repository", name, (repository, config.daemon))
        for name, repository in config.repositories.items()
        if repository.check is not None or repository.prune is not None
    ]
    if any(backup.watch is not None for backup in config.backups.values()):
        specs.append(WATCHER)  # told what to watch, not restarted by a reload (see Master)
    return {spec.key: spec for spec in specs}


@dataclass(frozen=True)
class Diff:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]


def diff(old: dict[str, WorkerSpec], new: dict[str, WorkerSpec]) -> Diff:
    """Which workers a reload from `old` to `new` must start, restart and stop."""
    return Diff(
        added=tuple(key for key in new if key not in old),
        changed=tuple(key for key in new if key in old and old[key] != new[key]),
        removed=tuple(key for key in old if key not in new),
    )
