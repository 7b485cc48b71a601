"""What one worker is: a backup, or a repository to check and prune, and what it depends on.

The master derives the specs from the configuration and diffs them on reload
(master/specs.py); a worker is handed its own. Here, so that the worker needs nothing of
the master.
"""

from __future__ import annotations

from dataclasses import dataclass

from henbackup.config.model import Backup, Daemon, Repository
from henbackup.names import WorkerKind, worker_key


@dataclass(frozen=True)
class WorkerSpec:
    """A worker's `definition` holds everything it depends on: a reload restarts exactly
    the workers whose definition changed."""

    kind: WorkerKind
    name: str
    definition: tuple[Backup | Repository | Daemon, ...]

    @property
    def key(self) -> str:
        return worker_key(self.kind, self.name)
