"""The repository's engine: the one place that picks restic or borg for a repository.

A job (and the pipeline of a backup whose repositories mix engines) holds one `Engines`:
each call goes to the engine its target names (`Target.engine`, from the repository's
`engine` key), built on first use with the same job settings (limits, checkpoint, stall
timeout, pause). Engine modules are imported only when a repository needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from henbackup.config.model import STALL_TIMEOUT, Daemon, Retention
from henbackup.engine.base import (
    BackupRequest,
    BackupResult,
    Checkpoint,
    CheckResult,
    Engine,
    ForgetResult,
    ProgressCallback,
    RepositoryStats,
    RestoreResult,
    Snapshot,
    SpawnCallback,
    Target,
)
from henbackup.errors import EngineError

# engine name → (module, class) under henbackup.engine
KINDS = {"restic": ("restic", "ResticEngine"), "borg": ("borg", "BorgEngine")}


def engine_class(kind: str) -> type[Engine]:
    """The Engine class of an engine name. Raises EngineError for an unknown one."""
    if kind not in KINDS:
        raise EngineError(f"unknown engine {kind!r}: use one of {', '.join(KINDS)}")
    module, name = KINDS[kind]
    found: type[Engine] = getattr(importlib.import_module(f"henbackup.engine.{module}"), name)
    return found


class Engines(Engine):
    """Every engine a job may need, each asked by the target it works on."""

    def __init__(
        self,
        binaries: dict[str, str],
        cache_dir: Path | None = None,
        lock_wait: float = 0.0,
        on_spawn: SpawnCallback | None = None,
        checkpoint: Checkpoint | None = None,
        stall_timeout: float = STALL_TIMEOUT,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.binaries = binaries
        self.settings: dict[str, Any] = {
            "cache_dir": cache_dir,
            "lock_wait": lock_wait,
            "on_spawn": on_spawn,
            "stall_timeout": stall_timeout,
            "paused": paused,
        }
        self.checkpoint = checkpoint or (lambda: None)
        self.on_stall = None
        self.built: dict[str, Engine] = {}

    def of(self, target: Target) -> Engine:
        """The engine of `target`, with this job's checkpoint and stall reporter."""
        kind = target.engine
        if kind not in self.built:
            binary = self.binaries.get(kind, kind)
            self.built[kind] = engine_class(kind)(binary, **self.settings)  # type: ignore[call-arg]
        engine = self.built[kind]
        engine.on_stall, engine.checkpoint = self.on_stall, self.checkpoint
        return engine

    def ensure_initialized(self, target: Target) -> bool:
        return self.of(target).ensure_initialized(target)

    def backup(
        self, target: Target, request: BackupRequest, on_progress: ProgressCallback | None = None
    ) -> BackupResult:
        return self.of(target).backup(target, request, on_progress)

    def snapshots(
        self, target: Target, backup: str | None = None, host: str | None = None
    ) -> list[Snapshot]:
        return self.of(target).snapshots(target, backup, host)

    def restore(
        self,
        target: Target,
        snapshot_id: str,
        destination: str,
        includes: tuple[str, ...] = (),
        on_progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        return self.of(target).restore(target, snapshot_id, destination, includes, on_progress)

    def forget(self, target: Target, policy: Retention, backup: str, host: str) -> ForgetResult:
        return self.of(target).forget(target, policy, backup, host)

    def prune(self, target: Target) -> None:
        self.of(target).prune(target)

    def check(self, target: Target, read_data_subset: str | None = None) -> CheckResult:
        return self.of(target).check(target, read_data_subset)

    def unlock_stale(self, target: Target) -> None:
        self.of(target).unlock_stale(target)

    def stats(self, target: Target) -> RepositoryStats:
        return self.of(target).stats(target)


def repository_engines(daemon: Daemon, **settings: Any) -> Engines:
    """The engines of a job under `daemon`'s settings (binaries); `settings` as Engines'."""
    return Engines({"restic": daemon.restic, "borg": daemon.borg}, **settings)
