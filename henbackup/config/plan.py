"""The resolved plan that `henbackup check-config` prints: what will run, where, and when.

Secrets stay out: locations lose their URL credentials, passwords and env show only their
kind or names, hooks show no header, body or arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from henbackup.config import schema
from henbackup.config.cron import parse_cron
from henbackup.config.model import (
    Backup,
    CommandHook,
    Config,
    Cron,
    Hook,
    Maintenance,
    Repository,
    Resources,
    Retention,
    ScheduleEntry,
)
from henbackup.config.units import format_duration as _duration
from henbackup.humanize import size_setting
from henbackup.redact import Redactor, redact_location

_LABEL_WIDTH = 16  # the longest label, "download_limit", and two spaces
_PASSWORD_KINDS = {"password": "in the config", "file": "file {}", "command": "from a command"}


def describe_plan(config: Config, now: datetime) -> str:
    """The human description of `config`; cron next runs are computed from `now`
    (timezone-aware local time; a naive `now` is taken as local time)."""
    now = now if now.tzinfo is not None else now.astimezone()
    sections = [
        _block("Files", [("read" if i == 0 else "", str(f)) for i, f in enumerate(config.files)]),
        *(_repository(repository, now) for repository in config.repositories.values()),
        *(_backup(backup, now) for backup in config.backups.values()),
        _daemon(config),
    ]
    return "\n\n".join(sections) + "\n"


def _block(title: str, rows: Iterable[tuple[str, str]]) -> str:
    """A title, then `label  value` rows; a row with an empty label continues the previous."""
    lines = [title]
    for label, value in rows:
        lines.append(f"  {label:<{_LABEL_WIDTH}}{value}")
    return "\n".join(lines)


def _limits(upload: int | None, download: int | None) -> list[tuple[str, str]]:
    rows = [("upload_limit", upload), ("download_limit", download)]
    return [(label, f"{size_setting(value)}/s") for label, value in rows if value is not None]


def _schedule(entry: ScheduleEntry, now: datetime) -> str:
    if isinstance(entry, Cron):
        following = parse_cron(entry.expression).next_after(now)
        return f'cron "{entry.expression}", next {following:%Y-%m-%d %H:%M:%S %Z}'
    return f"every {entry.text} since the last success"


def _schedule_rows(
    label: str, entries: Iterable[ScheduleEntry], now: datetime
) -> list[tuple[str, str]]:
    described = [_schedule(entry, now) for entry in entries]
    return [(label if i == 0 else "", text) for i, text in enumerate(described)]


def _maintenance(label: str, maintenance: Maintenance, now: datetime) -> list[tuple[str, str]]:
    details = f"priority {maintenance.priority.label}"
    if maintenance.read_data_subset:
        details += f", read data subset {maintenance.read_data_subset}"
    schedule = _schedule_rows("", maintenance.schedule, now) or [("", "manual only")]
    return [(label, details), *schedule]


def _repository(repository: Repository, now: datetime) -> str:
    password = repository.password
    literal = [password.value] if password.kind == "password" else []
    rows = [  # a location may hold the password too (written twice, by mistake)
        ("location", Redactor.of(literal)(redact_location(repository.location))),
        ("password", _PASSWORD_KINDS[password.kind].format(password.value)),
    ]
    if repository.engine != "restic":
        rows.insert(0, ("engine", repository.engine))
    if repository.env:
        rows.append(("env", ", ".join(name for name, _ in repository.env) + " (values hidden)"))
    if repository.env_file:
        rows.append(("env_file", f"{repository.env_file} (read as restic starts)"))
    if repository.env_credentials:
        credentials = (f"{name} from {path}" for name, path in repository.env_credentials)
        rows.append(("env_credentials", ", ".join(credentials)))
    if repository.options:
        names = (option.partition("=")[0] for option in repository.options)
        rows.append(("options", ", ".join(names) + " (values hidden)"))
    rows += _limits(repository.upload_limit, repository.download_limit)
    if repository.check:
        rows += _maintenance("check", repository.check, now)
    if repository.prune:
        rows += _maintenance("prune", repository.prune, now)
    if repository.resources != Resources():
        rows.append(("resources", _resources(repository.resources)))
    return _block(f"Repository {repository.name}", rows)


def _retention(retention: Retention) -> str:
    """The rules in the schema's order, keep_within last."""
    rules = ((name, getattr(retention, name)) for name in schema.RETENTION.names)
    return ", ".join(f"{name} {value}" for name, value in rules if value is not None)


def _resources(resources: Resources) -> str:
    shown = {
        **{name: getattr(resources, name) for name in schema.RESOURCES.names},
        "cpu_quota": resources.cpu_quota and f"{resources.cpu_quota * 100:g}%",
        "memory_max": resources.memory_max and size_setting(resources.memory_max),
    }
    return ", ".join(f"{name} {value}" for name, value in shown.items() if value is not None)


def _hook(hook: Hook) -> str:
    """The hook without anything secret: program name, or method and URL without userinfo,
    query or what a ${NAME} brought in."""
    if isinstance(hook, CommandHook):
        what = f"command {hook.command[0]}" + (" ..." if len(hook.command) > 1 else "")
    else:
        url = re.split(r"[?#]", redact_location(hook.url))[0]  # a query may hold a token
        what = f"http {hook.method} {url}"
    what = Redactor.of(hook.secrets)(what)
    return f"{what} (timeout {_duration(hook.timeout)}, on failure {hook.on_failure})"


def _triggers(backup: Backup, now: datetime) -> list[tuple[str, str]]:
    rows = []
    if backup.watch:
        wait_min, wait_max = _duration(backup.watch.wait_min), _duration(backup.watch.wait_max)
        rows.append(("watch", f"on change, once quiet for {wait_min}, at most {wait_max} after it"))
    rows += _schedule_rows("schedule", backup.schedule, now)
    return rows or [("triggers", "none: manual only (henbackupctl backup)")]


def _backup(backup: Backup, now: datetime) -> str:
    rows = [
        ("paths", ", ".join(backup.paths)),
        *([("excludes", ", ".join(backup.excludes))] if backup.excludes else []),
        ("repositories", ", ".join(backup.repositories)),
        ("priority", backup.priority.label),
        *_triggers(backup, now),
        *_limits(backup.upload_limit, backup.download_limit),
    ]
    if backup.retention:
        rows.append(("retention", _retention(backup.retention)))
    if backup.resources != Resources():
        rows.append(("resources", _resources(backup.resources)))
    for moment in schema.HOOKS.names:
        hooks = getattr(backup.hooks, moment)
        rows += [(f"{moment} hook" if i == 0 else "", _hook(h)) for i, h in enumerate(hooks)]
    return _block(f"Backup {backup.name}", rows)


def _daemon(config: Config) -> str:
    daemon, metrics = config.daemon, config.metrics
    rows = [
        ("hostname", daemon.hostname),
        ("jobs at once", str(daemon.max_concurrent_jobs)),
        *_limits(daemon.upload_limit, daemon.download_limit),
        ("restic", daemon.restic),
        ("stall_timeout", _duration(daemon.stall_timeout)),
    ]
    if metrics.textfile:
        rows.append(("metrics file", str(metrics.textfile)))
    if metrics.listen:
        host, port = metrics.listen
        rows.append(("metrics http", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"))
    return _block("Daemon", rows)
