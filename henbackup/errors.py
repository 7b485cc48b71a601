"""The one error hierarchy of henbackup.

Every message is one line, free of secrets, and tells the user what to do.
"""

from __future__ import annotations

from collections import namedtuple


class HenbackupError(Exception):
    """Base of every error henbackup raises on purpose."""


class Problem(namedtuple("Problem", ("file", "key", "message"))):
    """One thing wrong in a configuration (file, key, message: all str): where, and what to
    do about it. (A namedtuple: henbackupctl imports this module, and dataclasses would cost
    it a quarter of its start, typing's NamedTuple a tenth.)"""

    __slots__ = ()

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(HenbackupError):
    """The configuration is invalid; carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        first = str(self.problems[0]) if self.problems else "invalid configuration"
        more = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(first + more)


class UsageError(HenbackupError):
    """A request names something unknown or is of the wrong shape (henbackupctl exits 2)."""


class EngineError(HenbackupError):
    """The backup engine (restic) failed."""


class WrongPassword(EngineError):
    """The repository exists but the password does not open it."""


class RepositoryMissing(EngineError):
    """There is no repository at the location (not initialised yet, or wrong path)."""


class BackendUnreachable(EngineError):
    """The storage backend could not be reached (network, credentials, server down)."""


class AccessRefused(BackendUnreachable):
    """The backend answered but refused the credentials (keys, user, password, ssh key), or
    the server is not the one known_hosts knows: waiting or retrying will not help."""


class RepositoryLocked(EngineError):
    """Another live process holds a conflicting lock on the repository."""


class SnapshotNotFound(EngineError):
    """No snapshot matches the given id."""


class Stalled(EngineError):
    """The engine made no progress for the stall timeout: it was ended, and a bounded
    removal of its lock was tried (a later job removes a lock it could not)."""


class JobCancelled(HenbackupError):
    """The job was cancelled; anything it started was interrupted cleanly."""


class StopRequested(JobCancelled):
    """The whole run stops (the daemon or its worker is stopping): no further job starts."""


class HookError(HenbackupError):
    """A before/after/failure hook failed."""


class QueueBusy(HenbackupError):
    """Another process holds the job queue's lock, and the caller may not wait for it."""


class QueueTimeout(HenbackupError):
    """A job waited longer than its timeout for a slot or its repository."""


class UnsafeTarget(HenbackupError):
    """A restore target someone other than root could redirect (a link, a folder of theirs)."""


class ProtocolError(HenbackupError):
    """A message between henbackup's processes is not of its declared shape
    (henbackup/channel.py): it costs one error event, never the process that read it."""
