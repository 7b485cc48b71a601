"""The names one backup (or repository) goes by, declared together.

A backup NAME is the master's worker `backup:NAME` (a repository's worker is
`repository:NAME`), the processes `hb:NAME` (its worker) and `hbjob:NAME` (its job process)
in `ps`, the run record `backups/NAME.json` in the state directory (NAME %-encoded as one
file name) and the restic tag `backup-NAME` on its snapshots. The status model keys its
results by observe.status.RunKey(repository, "backup", NAME). The watcher, which watches
every backup's paths, is the worker `watcher:watcher` and the process `hbwatch`.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

WorkerKind = Literal["backup", "repository", "watcher"]
WATCHER_TITLE = "hbwatch"  # the watcher's process name (one inotify instance for all)
_TAG_PREFIX = "backup-"


def worker_key(kind: WorkerKind, name: str) -> str:
    """The master's key of a worker: `backup:NAME` or `repository:NAME`."""
    return f"{kind}:{name}"


def worker_title(name: str) -> str:
    """A worker's process name (/proc/PID/comm, which keeps 15 bytes): `hb:NAME`."""
    return f"hb:{name}"


def job_title(name: str) -> str:
    """A job process's name: `hbjob:NAME` (a backup's or repository's, or a one-off's
    command)."""
    return f"hbjob:{name}"


def backup_record(name: str) -> str:
    """The run record of backup `name`, relative to the state directory."""
    return f"backups/{_file_name(name)}.json"


def maintenance_record(repository: str, operation: str) -> str:
    """The run record of a repository's scheduled `check` or `prune`."""
    return f"repositories/{_file_name(repository)}/{_file_name(operation)}.json"


def snapshot_tag(name: str) -> str:
    """The restic tag on every snapshot of backup `name`: `backup-NAME`."""
    return _TAG_PREFIX + name


def tagged_backup(tag: str) -> str | None:
    """The backup a snapshot tag names, None if it names none."""
    return tag.removeprefix(_TAG_PREFIX) if tag.startswith(_TAG_PREFIX) else None


def _file_name(name: str) -> str:
    """A config name as one file name: "/" and other odd characters %-encoded."""
    return quote(name, safe="-_.@+=,~ ") if name not in ("", ".", "..") else quote(name) + "%"
