"""What the master supervises: one worker per backup, one per maintained repository, and
the watcher when a backup is watched (one inotify instance for all: worker/watching.py).

A worker's `definition` holds everything it depends on, so a reload restarts exactly the
workers whose definition changed and leaves the others running, even mid-backup.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from henbackup.config.model import PREEMPT_AFTER, Config, Daemon
from henbackup.worker.spec import WorkerSpec

WATCHER = WorkerSpec("watcher", "watcher", ())


def worker_specs(config: Config) -> dict[str, WorkerSpec]:
    """Every worker `config` asks for, by key."""
    daemon = _read_by_workers(config.daemon)
    specs = [
        WorkerSpec(
            "backup",
            name,
            (backup, *(config.repositories[r] for r in backup.repositories), daemon),
        )
        for name, backup in config.backups.items()
    ]
    specs += [
        WorkerSpec("repository", name, (repository, daemon))
        for name, repository in config.repositories.items()
        if repository.check is not None or repository.prune is not None
    ]
    if any(backup.watch is not None for backup in config.backups.values()):
        specs.append(WATCHER)  # told what to watch, not restarted by a reload (see Master)
    return {spec.key: spec for spec in specs}


def _read_by_workers(daemon: Daemon) -> Daemon:
    """The [daemon] settings as far as workers and their jobs read them: preempt_after is
    the master's alone, and max_concurrent_jobs matters to a job only where it shares a
    host-wide limit out (a reload changing just these interrupts no running backup)."""
    shared = daemon.upload_limit is not None or daemon.download_limit is not None
    slots = daemon.max_concurrent_jobs if shared else 1
    return replace(daemon, preempt_after=PREEMPT_AFTER, max_concurrent_jobs=slots)


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
