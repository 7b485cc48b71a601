"""The engine contract: what henbackup asks of a backup tool, in its own words.

Only an engine module (`restic.py`, `borg.py`) knows a tool's command line and output. Every call
blocks until the tool is done; it runs in a job process, never in a selector loop. If the
calling process's `Checkpoint` (which the engine calls often, whatever the tool says)
raises `JobCancelled` while a call runs (a stop or a cancel its signal handlers recorded),
the engine interrupts the tool so that the repository stays consistent and unlocked, waits
for it, and lets `JobCancelled` propagate. A call whose tool makes no progress for the
engine's stall timeout is ended the same way and raises EngineError ("no progress for ...").

Failures raise `henbackup.errors.EngineError` subclasses with one-line, secret-free reasons.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from henbackup.config.model import PasswordSource, Retention
from henbackup.names import tagged_backup


def plain_include(include: str) -> bool:
    """Whether a restore's include names one path (absolute, normal, no glob character):
    every engine restores that path and what is below it, nothing else (restore's --in-place
    check relies on it). Any other include is a pattern, in restic's syntax."""
    return (
        os.path.isabs(include)
        and os.path.normpath(include) == include
        and not set(include) & set("*?[\\")
    )


@dataclass(frozen=True)
class Target:
    """One repository as a job sees it: where, how to open it, how fast it may go."""

    name: str
    location: str = field(repr=False)
    password: PasswordSource
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    env_file: str | None = None  # KEY=value lines, read as restic starts (secret_env.py)
    env_credentials: tuple[tuple[str, str], ...] = ()  # (variable, credential file)
    options: tuple[str, ...] = ()
    upload_limit: int | None = None  # bytes per second
    download_limit: int | None = None
    engine: str = "restic"  # the program that reads and writes it (engine/engines.py)


@dataclass(frozen=True)
class TransferProgress:
    """A progress report during a backup or restore.

    `bytes_done` is what the tool has read (a backup) or written (a restore). A backup's
    tool may read far ahead of its upload (a bandwidth limit): then `bytes_sent` and
    `send_rate` say what really left, `fraction` counts what is sent and `seconds_remaining`
    is the later of reading's and sending's (engine/transfer.py).
    """

    fraction: float  # 0.0 .. 1.0
    files_done: int
    total_files: int | None
    bytes_done: int
    total_bytes: int | None
    seconds_elapsed: float
    seconds_remaining: float | None = None
    bytes_sent: int | None = None  # to the repository so far (None: not measured)
    send_rate: float | None = None  # bytes per second sent over the last seconds


ProgressCallback = Callable[[TransferProgress], None]


@dataclass(frozen=True)
class BackupRequest:
    backup: str  # the backup's name: the snapshot is tagged backup-<name>
    paths: tuple[str, ...]
    excludes: tuple[str, ...] = ()
    host: str = ""


@dataclass(frozen=True)
class BackupResult:
    snapshot_id: str | None  # None when nothing changed and the tool made no snapshot
    files_new: int
    files_changed: int
    files_unmodified: int
    bytes_added: int
    bytes_processed: int
    duration: float
    warnings: tuple[str, ...] = ()  # e.g. a source path that does not exist


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: datetime
    host: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    bytes_added: int | None = None  # known from restic 0.17 on (the snapshot's summary)

    @property
    def backup(self) -> str | None:
        """The backup name from the backup-<name> tag, if any."""
        backups = (tagged_backup(tag) for tag in self.tags)
        return next((backup for backup in backups if backup is not None), None)


@dataclass(frozen=True)
class RestoreResult:
    target: str
    files_restored: int
    bytes_restored: int
    duration: float


@dataclass(frozen=True)
class ForgetResult:
    kept: tuple[str, ...]  # snapshot ids
    removed: tuple[str, ...]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class RepositoryStats:
    total_size: int
    total_file_count: int
    snapshots_count: int


# Called with the tool's pid right after it starts: limits/ moves it into a cgroup, renices it.
SpawnCallback = Callable[[int], None]
# Called once when a run has made no progress for a while (it is ended at the engine's stall
# timeout), with the seconds so far and one line on what the tool is doing.
StallCallback = Callable[[float, str], None]
# Called whenever the engine hears from its running tool, as the tool starts and at least
# every second, outside any lock: it raises JobCancelled to have the tool interrupted cleanly
# (a stop or a cancel noted by a signal handler, which itself only records).
Checkpoint = Callable[[], None]


class Engine(ABC):
    """A backup tool behind henbackup's vocabulary. See the module docstring for the rules."""

    on_stall: StallCallback | None = None  # set by the job that runs (see jobs/job.py)
    checkpoint: Checkpoint | None = None  # where the job acts on a stop or cancel (raises)

    @abstractmethod
    def ensure_initialized(self, target: Target) -> bool:
        """Create the repository if there is none. Returns True if it was created."""

    @abstractmethod
    def backup(
        self, target: Target, request: BackupRequest, on_progress: ProgressCallback | None = None
    ) -> BackupResult: ...

    @abstractmethod
    def snapshots(
        self, target: Target, backup: str | None = None, host: str | None = None
    ) -> list[Snapshot]:
        """Snapshots, oldest first, optionally only those of one backup and/or host."""

    @abstractmethod
    def restore(
        self,
        target: Target,
        snapshot_id: str,
        destination: str,
        includes: tuple[str, ...] = (),
        on_progress: ProgressCallback | None = None,
    ) -> RestoreResult: ...

    @abstractmethod
    def forget(self, target: Target, policy: Retention, backup: str, host: str) -> ForgetResult:
        """Apply the policy to the snapshots of this backup made by this host only."""

    @abstractmethod
    def prune(self, target: Target) -> None: ...

    @abstractmethod
    def check(self, target: Target, read_data_subset: str | None = None) -> CheckResult: ...

    @abstractmethod
    def unlock_stale(self, target: Target) -> None:
        """Remove locks left by processes that no longer exist (never a live one)."""

    @abstractmethod
    def stats(self, target: Target) -> RepositoryStats: ...
