"""The validated configuration: frozen dataclasses, the vocabulary every room shares.

Durations are float seconds, rates are integer bytes per second, priorities are `Priority`.
Nothing here reads files or the environment: see `load.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# Named priorities of henbackup.toml(5), PRIORITIES; integers are allowed too.
PRIORITY_VALUES: dict[str, int] = {"superior": 10, "normal": 0, "inferior": -10}


@dataclass(frozen=True, order=True)
class Priority:
    """A job priority. Orders as the queue does: a greater Priority runs first.

    `band` separates the special levels: on-idle (0) < ordinary integers (1) < next (2)
    < immediate (3); `value` orders ordinary integers within band 1.
    """

    band: int
    value: int = 0

    ON_IDLE_BAND = 0
    ORDINARY_BAND = 1
    NEXT_BAND = 2
    IMMEDIATE_BAND = 3

    @classmethod
    def ordinary(cls, value: int) -> Priority:
        return cls(cls.ORDINARY_BAND, value)

    @property
    def label(self) -> str:
        """How the config spells it: `next`, `superior`, `-3`..."""
        if self.band != self.ORDINARY_BAND:
            return {0: "on-idle", 2: "next", 3: "immediate"}[self.band]
        names = {v: k for k, v in PRIORITY_VALUES.items()}
        return names.get(self.value, str(self.value))

    @property
    def effective(self) -> int:
        """The integer reported as HENBACKUP_PRIORITY."""
        return {0: -(2**31), 2: 2**31 - 2, 3: 2**31 - 1}.get(self.band, self.value)


NORMAL = Priority.ordinary(0)
# [daemon] stall_timeout's default: a job with no progress for this long is ended.
STALL_TIMEOUT = 600.0
INFERIOR = Priority.ordinary(-10)
# [daemon] preempt_after's default: a few seconds, so that a short job is rarely paused.
PREEMPT_AFTER = 5.0
IMMEDIATE = Priority(Priority.IMMEDIATE_BAND)


@dataclass(frozen=True)
class PasswordSource:
    """Where a repository password comes from. The literal value never shows in repr."""

    kind: Literal["password", "file", "command"]
    value: str = field(repr=False)
    # Where it is set (config file, key path), for secrets.py; file is "" for a password
    # that came from the environment (${NAME}): it is in no file.
    file: str = field(default="", compare=False)
    key: str = field(default="", compare=False)

    def __repr__(self) -> str:  # a literal password must never reach a log line
        shown = "<hidden>" if self.kind == "password" else self.value
        return f"PasswordSource(kind={self.kind!r}, value={shown!r})"


@dataclass(frozen=True)
class Interval:
    """`"1h"`: at least once per this many seconds since the last successful run."""

    seconds: float
    text: str


@dataclass(frozen=True)
class Cron:
    """A cron expression of 5 fields, or 6 with seconds first, in local time."""

    expression: str


ScheduleEntry = Interval | Cron


@dataclass(frozen=True)
class Watch:
    """Run after changes: once quiet for `wait_min`, at most `wait_max` after the first one."""

    wait_min: float = 10.0
    wait_max: float = 300.0


@dataclass(frozen=True)
class Retention:
    """A restic forget policy; None means the rule is not used."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None  # a restic duration such as "1y2m3d"


@dataclass(frozen=True)
class Resources:
    """Per-job limits applied through cgroups, nice and ionice."""

    cpu_weight: int | None = None  # 1..10000
    io_weight: int | None = None  # 1..10000
    cpu_quota: float | None = None  # fraction of one CPU: "50%" -> 0.5
    memory_max: int | None = None  # bytes
    nice: int | None = None  # -20..19
    ionice: Literal["idle", "best-effort", "realtime"] | None = None


OnFailure = Literal["ignore", "continue", "stop"]


@dataclass(frozen=True)
class HttpHook:
    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    timeout: float = 60.0
    retries: int = 0
    on_failure: OnFailure = "stop"
    secrets: tuple[str, ...] = field(default=(), repr=False)  # from ${NAME}: never shown


@dataclass(frozen=True)
class CommandHook:
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    timeout: float = 60.0
    on_failure: OnFailure = "stop"
    secrets: tuple[str, ...] = field(default=(), repr=False)  # from ${NAME}: never shown


Hook = HttpHook | CommandHook


@dataclass(frozen=True)
class Hooks:
    before: tuple[Hook, ...] = ()
    after: tuple[Hook, ...] = ()
    failure: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class Maintenance:
    """A repository's scheduled check or prune."""

    schedule: tuple[ScheduleEntry, ...]
    priority: Priority = INFERIOR
    read_data_subset: str | None = None  # check only: "5%", "1/10", "500M"


@dataclass(frozen=True)
class Repository:
    name: str
    location: str = field(repr=False)  # may embed credentials (rest:https://user:pw@...)
    password: PasswordSource
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # Provider keys kept out of the config: KEY=value lines, and variables each read from
    # a systemd credential (name, file). Read by the job process only, as restic starts.
    env_file: str | None = None
    env_credentials: tuple[tuple[str, str], ...] = ()
    options: tuple[str, ...] = ()
    upload_limit: int | None = None
    download_limit: int | None = None
    check: Maintenance | None = None
    prune: Maintenance | None = None
    resources: Resources = Resources()  # for its check and prune jobs
    # Where it is defined (config file, key path), for check-config's messages.
    file: str = field(default="", compare=False)
    key: str = field(default="", compare=False)
    engine: str = "restic"  # or "borg" (config/schema.py ENGINES)


@dataclass(frozen=True)
class Backup:
    name: str
    paths: tuple[str, ...]
    repositories: tuple[str, ...]
    excludes: tuple[str, ...] = ()
    schedule: tuple[ScheduleEntry, ...] = ()
    watch: Watch | None = None
    priority: Priority = NORMAL
    upload_limit: int | None = None
    download_limit: int | None = None
    retention: Retention | None = None
    resources: Resources = Resources()
    hooks: Hooks = Hooks()
    # Where it is defined (config file, key path), for check-config's messages.
    file: str = field(default="", compare=False)
    key: str = field(default="", compare=False)


@dataclass(frozen=True)
class Daemon:
    hostname: str
    max_concurrent_jobs: int = 1
    upload_limit: int | None = None
    download_limit: int | None = None
    restic: str = "restic"
    stall_timeout: float = STALL_TIMEOUT  # seconds
    preempt_after: float = PREEMPT_AFTER  # seconds a superior job waits before preempting
    borg: str = "borg"  # the engine binary of repositories with engine = "borg"


@dataclass(frozen=True)
class Metrics:
    textfile: Path | None = None
    listen: tuple[str, int] | None = None  # (host, port)


@dataclass(frozen=True)
class Config:
    daemon: Daemon
    metrics: Metrics
    repositories: dict[str, Repository]
    backups: dict[str, Backup]
    files: tuple[Path, ...]  # every file that was read, in merge order
