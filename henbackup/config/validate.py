"""Check the merged configuration document and build the frozen `Config` from it.

Each converter takes a value and the `At` of its key path, returns the model's value and
reports problems at that path; a value with a problem leaves its field out (or the whole
repository, backup or hook), so that one load reports every problem at once. Messages never
quote password*, location, env, headers, body, hook commands or urls, nor an `Expanded`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from henbackup.config import cron, units
from henbackup.config.model import (
    INFERIOR,
    NORMAL,
    STALL_TIMEOUT,
    Backup,
    CommandHook,
    Config,
    Cron,
    Daemon,
    Hook,
    Hooks,
    HttpHook,
    Interval,
    Maintenance,
    Metrics,
    PasswordSource,
    Repository,
    Resources,
    Retention,
    ScheduleEntry,
    Watch,
)
from henbackup.config.problems import (
    At,
    Expanded,
    Invalid,
    did_you_mean,
    environment_values,
    show,
    type_name,
    unknown_key,
)
from henbackup.errors import Problem

T = TypeVar("T")

# Names of repositories and backups; load.py checks them as it merges.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_METHOD_RE = re.compile(r"[A-Za-z]+")
_RESTIC_DURATION_RE = re.compile(r"(?:[0-9]+y)?(?:[0-9]+m)?(?:[0-9]+d)?(?:[0-9]+h)?")

# The keys of each table. load.py checks the first three as it merges files.
TOP_KEYS = ("daemon", "metrics", "repositories", "backups")
DAEMON_KEYS = (
    *("hostname", "max_concurrent_jobs", "upload_limit", "download_limit"),
    *("restic", "stall_timeout"),
)
METRICS_KEYS = ("textfile", "listen")
# Where systemd puts the credentials of henbackup.service; stands in for them outside it.
CREDENTIALS_PLACEHOLDER = "/run/credentials/henbackup.service"
CREDENTIALS_LATER = (
    "CREDENTIALS_DIRECTORY is not set here: the credential is checked when the service"
    " starts (LoadCredential= or LoadCredentialEncrypted= in its unit)"
)
_PASSWORD_KEYS = ("password", "password_file", "password_command", "password_credential")
_REPOSITORY_KEYS = (
    "location",
    *_PASSWORD_KEYS,
    *("env", "options", "upload_limit", "download_limit", "check", "prune", "resources"),
)
_BACKUP_KEYS = (
    *("paths", "repositories", "excludes", "schedule", "watch", "priority"),
    *("upload_limit", "download_limit", "retention", "resources", "hooks"),
)
_RETENTION_COUNTS = (
    *("keep_last", "keep_hourly", "keep_daily"),
    *("keep_weekly", "keep_monthly", "keep_yearly"),
)
_RESOURCES_KEYS = ("cpu_weight", "io_weight", "cpu_quota", "memory_max", "nice", "ionice")
_HOOK_MOMENTS = ("before", "after", "failure")
_HTTP_HOOK_KEYS = ("type", "url", "method", "headers", "body", "timeout", "retries", "on_failure")
_COMMAND_HOOK_KEYS = ("type", "command", "env", "cwd", "timeout", "on_failure")
_ANY_HOOK_KEYS = tuple(dict.fromkeys(_HTTP_HOOK_KEYS + _COMMAND_HOOK_KEYS))
_WAITS = ("wait_min", "wait_max")
_ON_FAILURE = ("ignore", "continue", "stop")
_IONICE = ("idle", "best-effort", "realtime")


Entries = dict[str, tuple[Any, At]]  # key or name -> (value, where it was set)


@dataclass
class Sections:
    """The document merged from every file: each entry keeps the key path of its own file."""

    daemon: Entries = field(default_factory=dict)
    metrics: Entries = field(default_factory=dict)
    repositories: Entries = field(default_factory=dict)
    backups: Entries = field(default_factory=dict)


def to_config(sections: Sections, hostname: str, files: tuple[Path, ...]) -> Config:
    """The Config of `sections`, leaving out what is invalid; problems go to each `At`.

    `hostname` is daemon.hostname's default. Sections are checked in a fixed order, which
    is the order of their problems within a file.
    """
    repositories = {
        name: _repository(name, value, at) for name, (value, at) in sections.repositories.items()
    }
    backups = {
        name: _backup(name, value, at, sections.repositories)
        for name, (value, at) in sections.backups.items()
    }
    daemon = _daemon(sections.daemon, hostname)
    metrics = _metrics(sections.metrics)
    return Config(
        daemon=daemon,
        metrics=metrics,
        repositories=_present(repositories),
        backups=_present(backups),
        files=files,
    )


# ---------------------------------------------------------------------------- helpers


def _present(items: Mapping[str, T | None]) -> dict[str, T]:
    """items without the None ones: those that were absent or invalid."""
    return {name: item for name, item in items.items() if item is not None}


def _expect(value: Any, kind: type, what: str) -> None:
    """Raise Invalid unless value is of `kind` (booleans are never integers)."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise Invalid(f"must be {what}, not {type_name(value)}")


def _from_parser(parse: Callable[[Any], T]) -> Callable[[Any, At], T]:
    """A converter from a units-style parser: its reason follows the shown value."""

    def convert(value: Any, at: At) -> T:
        try:
            return parse(value)
        except ValueError as error:
            raise Invalid(f"{show(value)} is {error}") from None

    return convert


# -------------------------------------------------------------------------- converters


def _table(value: Any, at: At, allowed: tuple[str, ...]) -> dict[str, Any]:
    """value as a table, after reporting each key not in `allowed`."""
    _expect(value, dict, "a table")
    for name in value:
        if name not in allowed:
            unknown_key(at.key(name), name, allowed)
    return value


def _text(value: Any, at: At) -> str:
    """A non-empty string; never quoted, so it suits secrets."""
    _expect(value, str, "a string")
    if not value:
        raise Invalid("must not be empty")
    return str(value)


def _absolute_path(value: Any, at: At) -> str:
    _expect(value, str, "a string")
    if not value.startswith("/"):
        raise Invalid(f"{show(value)} is not an absolute path: write it from the root, /...")
    return str(value)


def _integer(low: int | None = None, high: int | None = None) -> Callable[[Any, At], int]:
    def convert(value: Any, at: At) -> int:
        _expect(value, int, "an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise Invalid(f"{value} is out of range: use a number {bounds}")
        return int(value)

    return convert


def _choice(options: tuple[str, ...]) -> Callable[[Any, At], str]:
    def convert(value: Any, at: At) -> str:
        _expect(value, str, "a string")
        if value not in options:
            raise Invalid(f"{show(value)} is not one of {', '.join(options)}")
        return str(value)

    return convert


def _array(item: Callable[[Any, At], T], required: str = "") -> Callable[[Any, At], tuple[T, ...]]:
    """An array whose items each convert with `item`; `required` is the hint when empty."""

    def convert(value: Any, at: At) -> tuple[T, ...]:
        _expect(value, list, "an array")
        if required and not value:
            raise Invalid(f"must not be empty: {required}")
        converted = (at.index(i).attempt(element, item) for i, element in enumerate(value))
        return tuple(element for element in converted if element is not None)

    return convert


def _string_table(
    name_re: re.Pattern[str], what: str
) -> Callable[[Any, At], tuple[tuple[str, str], ...]]:
    """A table of names to strings (env, headers): values are never quoted."""

    def convert(value: Any, at: At) -> tuple[tuple[str, str], ...]:
        _expect(value, dict, "a table")
        pairs = []
        for name, text in value.items():
            if not name_re.fullmatch(name):
                at.key(name).problem(f"is not a valid {what}")
            elif isinstance(text, str):
                pairs.append((name, str(text)))
            else:
                at.key(name).problem(f"must be a string, not {type_name(text)}")
        return tuple(pairs)

    return convert


_env_table = _string_table(_ENV_NAME_RE, "environment variable name (letters, digits, _)")
_header_table = _string_table(_HEADER_NAME_RE, "HTTP header name")
_duration = _from_parser(units.parse_duration)
_rate = _from_parser(units.parse_rate)
_size = _from_parser(units.parse_size)
_priority = _from_parser(units.parse_priority)
_percent = _from_parser(units.parse_percent)
_listen = _from_parser(units.parse_listen)


def _positive_duration(value: Any, at: At) -> float:
    seconds = _duration(value, at)
    if seconds <= 0:
        raise Invalid(f"{show(value)} is too short: use a duration above 0")
    return seconds


def _schedule_entry(value: Any, at: At) -> ScheduleEntry:
    """A cron expression (has a space, or is an @macro) or an interval."""
    _expect(value, str, "a string")
    if any(c.isspace() for c in value.strip()) or value.startswith("@"):
        try:
            cron.parse_cron(value)
        except ValueError as error:
            # The error may quote the expression: not when it came from the environment.
            hint = ' (an interval has no spaces: "1h30m")' if len(value.split()) < 5 else ""
            reason = "" if isinstance(value, Expanded) else f": {error}{hint}"
            raise Invalid(f"{show(value)} is not a cron expression{reason}") from None
        return Cron(str(value).strip())
    return Interval(_positive_duration(value, at), str(value))


_schedule = _array(_schedule_entry)


# ------------------------------------------------------------------------ repositories


def _credential(value: Any, at: At) -> str:
    """The file of a systemd credential: $CREDENTIALS_DIRECTORY/<name>."""
    name = _text(value, at)
    if "/" in name or name in (".", ".."):
        raise Invalid("must be a credential name, as in LoadCredential=NAME:PATH (no /)")
    directory = at.run.env.get("CREDENTIALS_DIRECTORY")
    if not directory and at.run.deferred is not None:
        at.run.deferred.append(Problem(at.file, at.path, CREDENTIALS_LATER))
        directory = CREDENTIALS_PLACEHOLDER
    if not directory:
        raise Invalid(
            "CREDENTIALS_DIRECTORY is not set: pass the credential with systemd's "
            "LoadCredential= (or LoadCredentialEncrypted=), or use password_file"
        )
    return f"{directory.rstrip('/')}/{name}"


_PASSWORD_CONVERTERS: dict[str, tuple[str, Callable[[Any, At], str]]] = {
    "password": ("password", _text),
    "password_file": ("file", _absolute_path),
    "password_command": ("command", _text),
    "password_credential": ("file", _credential),
}


def _password(table: Mapping[str, Any], at: At) -> PasswordSource | None:
    """The one password source of a repository table."""
    present = [name for name in _PASSWORD_KEYS if name in table]
    if not present:
        at.problem(f"has no password: set one of {', '.join(_PASSWORD_KEYS)}")
    elif len(present) > 1:
        both = f"{', '.join(present[:-1])} and {present[-1]}"
        at.problem(f"{both} are set: keep exactly one of {', '.join(_PASSWORD_KEYS)}")
    sources = []
    for name in present:
        kind, convert = _PASSWORD_CONVERTERS[name]
        value = at.get(table, name, convert)
        if value is not None:
            # A password taken from the environment is in no file (secrets.py).
            from_env = kind == "password" and isinstance(table[name], Expanded)
            where = "" if from_env else at.file
            sources.append(PasswordSource(kind, value, where, at.key(name).path))  # type: ignore[arg-type]
    return sources[0] if len(sources) == 1 and len(present) == 1 else None


def _subset(value: Any, at: At) -> str:
    """restic's --read-data-subset: "5%", "1/10" or a size such as "500M"."""
    _expect(value, str, "a string")
    return _from_parser(units.parse_subset)(value, at)


def _maintenance(is_check: bool) -> Callable[[Any, At], Maintenance]:
    allowed = ("schedule", "priority", "read_data_subset") if is_check else ("schedule", "priority")

    def convert(value: Any, at: At) -> Maintenance:
        table = _table(value, at, allowed)
        return Maintenance(
            schedule=at.get(table, "schedule", _schedule) or (),
            priority=at.get(table, "priority", _priority) or INFERIOR,
            read_data_subset=at.get(table, "read_data_subset", _subset),
        )

    return convert


def _repository(name: str, value: Any, at: At) -> Repository | None:
    table = at.attempt(value, lambda v, a: _table(v, a, _REPOSITORY_KEYS))
    if table is None:
        return None
    location = at.require(table, "location", _text)
    password = _password(table, at)
    optional = {
        "env": at.get(table, "env", _env_table) or (),
        "options": at.get(table, "options", _array(_text)) or (),
        "upload_limit": at.get(table, "upload_limit", _rate),
        "download_limit": at.get(table, "download_limit", _rate),
        "check": at.get(table, "check", _maintenance(is_check=True)),
        "prune": at.get(table, "prune", _maintenance(is_check=False)),
        "resources": at.get(table, "resources", _resources) or Resources(),
    }
    if location is None or password is None:
        return None
    return Repository(name=name, location=location, password=password, **optional)


# ----------------------------------------------------------------------------- backups


def _watch(value: Any, at: At) -> Watch | None:
    """`true` (defaults), `false` (no watch) or {wait_min, wait_max}."""
    if isinstance(value, bool):
        return Watch() if value else None
    if not isinstance(value, dict):
        raise Invalid(
            f"must be true, false or a table {{ wait_min, wait_max }}, not {type_name(value)}"
        )
    table = _table(value, at, _WAITS)
    waits = {name: at.get(table, name, _duration) for name in _WAITS}
    if any(waits[name] is None for name in table if name in waits):
        return None  # already reported
    watch = Watch(**_present(waits))
    if watch.wait_max < watch.wait_min and "wait_max" in table:
        at.key("wait_max").problem("is shorter than wait_min: make it at least wait_min")
    elif watch.wait_max < watch.wait_min:
        at.key("wait_min").problem(
            f"is longer than the default wait_max ({watch.wait_max:g}s): set wait_max too"
        )
    return watch


def _restic_duration(value: Any, at: At) -> str:
    _expect(value, str, "a string")
    if not value or not _RESTIC_DURATION_RE.fullmatch(value):
        raise Invalid(
            f"{show(value)} is not a restic duration: "
            'use years, months, days, hours, largest first, e.g. "1y2m3d4h"'
        )
    return str(value)


def _retention(value: Any, at: At) -> Retention:
    table = _table(value, at, (*_RETENTION_COUNTS, "keep_within"))
    rules: dict[str, Any] = {
        name: at.get(table, name, _integer(low=0)) for name in _RETENTION_COUNTS
    }
    rules["keep_within"] = at.get(table, "keep_within", _restic_duration)
    all_valid = all(rules[name] is not None for name in rules if name in table)
    if all_valid and not any(rules.values()):  # restic would refuse, or forget everything
        at.problem("keeps nothing: set a keep_* rule above 0 or keep_within, e.g. keep_daily = 7")
    return Retention(**rules)


def _resources(value: Any, at: At) -> Resources:
    table = _table(value, at, _RESOURCES_KEYS)
    return Resources(
        cpu_weight=at.get(table, "cpu_weight", _integer(1, 10000)),
        io_weight=at.get(table, "io_weight", _integer(1, 10000)),
        cpu_quota=at.get(table, "cpu_quota", _percent),
        memory_max=at.get(table, "memory_max", _size),
        nice=at.get(table, "nice", _integer(-20, 19)),
        ionice=at.get(table, "ionice", _choice(_IONICE)),  # type: ignore[arg-type]
    )


def _url(value: Any, at: At) -> str:
    _expect(value, str, "a string")
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        valid = False
    if not valid:
        raise Invalid("must be an http:// or https:// URL with a host")
    return str(value)


def _method(value: Any, at: At) -> str:
    _expect(value, str, "a string")
    if not _METHOD_RE.fullmatch(value):
        raise Invalid(f"{show(value)} is not an HTTP method such as POST or GET")
    return str(value).upper()


def _body(value: Any, at: At) -> str:
    _expect(value, str, "a string")
    return str(value)


def _argv(value: Any, at: At) -> tuple[str, ...]:
    """A command as an argument list (no shell); arguments are never quoted."""
    _expect(value, list, 'an array of strings, e.g. ["/usr/bin/pg_dump", "-f", "/backup/db.sql"]')
    if not value:
        raise Invalid(
            'must not be empty: give the program and its arguments, e.g. ["/usr/bin/true"]'
        )
    for position, argument in enumerate(value):
        if not isinstance(argument, str):
            at.index(position).problem(f"must be a string, not {type_name(argument)}")
    if isinstance(value[0], str) and not value[0]:
        at.index(0).problem("must not be empty: give the program to run")
    return tuple(str(argument) for argument in value)


def _hook(value: Any, at: At) -> Hook | None:
    """One hook table: type = "http" or "command" decides the other keys."""
    _expect(value, dict, "a table")
    kind = value.get("type")
    # What the environment put into a hook (a ping URL's token, a header) is never shown.
    secrets = tuple(v for v in environment_values(value) if v)
    if kind == "http":
        hook = _http_hook(_table(value, at, _HTTP_HOOK_KEYS), at)
        return hook and replace(hook, secrets=secrets)
    if kind == "command":
        command = _command_hook(_table(value, at, _COMMAND_HOOK_KEYS), at)
        return command and replace(command, secrets=secrets)
    if "type" in value:
        at.key("type").problem(f'{show(kind)} is not a hook type: use "http" or "command"')
    else:
        at.key("type").problem('is required: set type = "http" or type = "command"')
    _table(value, at, _ANY_HOOK_KEYS)
    return None


def _hook_options(table: Mapping[str, Any], at: At) -> dict[str, Any]:
    """The keys every hook type has."""
    return {
        "timeout": at.get(table, "timeout", _positive_duration),
        "on_failure": at.get(table, "on_failure", _choice(_ON_FAILURE)),
    }


def _http_hook(table: Mapping[str, Any], at: At) -> HttpHook | None:
    options = _hook_options(table, at)
    url = at.require(table, "url", _url)
    options |= {
        "method": at.get(table, "method", _method),
        "headers": at.get(table, "headers", _header_table),
        "body": at.get(table, "body", _body),
        "retries": at.get(table, "retries", _integer(low=0)),
    }
    return HttpHook(url=url, **_present(options)) if url is not None else None


def _command_hook(table: Mapping[str, Any], at: At) -> CommandHook | None:
    options = _hook_options(table, at)
    command = at.require(table, "command", _argv)
    options |= {
        "env": at.get(table, "env", _env_table),
        "cwd": at.get(table, "cwd", _absolute_path),
    }
    return CommandHook(command=command, **_present(options)) if command is not None else None


def _hook_list(value: Any, at: At) -> tuple[Hook, ...]:
    _expect(value, list, "an array of tables ([[...hooks.before]] or [{ type = ... }])")
    hooks = (at.index(i).attempt(element, _hook) for i, element in enumerate(value))
    return tuple(hook for hook in hooks if hook is not None)


def _hooks(value: Any, at: At) -> Hooks:
    table = _table(value, at, _HOOK_MOMENTS)
    lists = {moment: at.get(table, moment, _hook_list) or () for moment in _HOOK_MOMENTS}
    return Hooks(**lists)


def _backup_repositories(known: Mapping[str, object]) -> Callable[[Any, At], tuple[str, ...]]:
    """The repositories a backup goes to: each defined (valid or not), each listed once."""

    def repository(value: Any, at: At) -> str:
        name = _text(value, at)
        if name not in known:
            hint = did_you_mean(name, known) if not isinstance(value, Expanded) else ""
            hint = hint or ": define it under [repositories.NAME] or fix the name"
            raise Invalid(f"repository {show(value)} is not defined{hint}")
        return name

    repositories = _array(repository, required="list the repositories to back up to")

    def convert(value: Any, at: At) -> tuple[str, ...]:
        names = repositories(value, at)
        for position, name in enumerate(names):
            if name in names[:position]:
                at.problem(f'lists repository "{name}" twice: list it once')
        return names

    return convert


def _backup(name: str, value: Any, at: At, repositories: Mapping[str, object]) -> Backup | None:
    table = at.attempt(value, lambda v, a: _table(v, a, _BACKUP_KEYS))
    if table is None:
        return None
    paths = at.require(
        table, "paths", _array(_absolute_path, required="list absolute paths to back up")
    )
    targets = at.require(table, "repositories", _backup_repositories(repositories))
    optional = {
        "excludes": at.get(table, "excludes", _array(_text)) or (),
        "schedule": at.get(table, "schedule", _schedule) or (),
        "watch": at.get(table, "watch", _watch),
        "priority": at.get(table, "priority", _priority) or NORMAL,
        "upload_limit": at.get(table, "upload_limit", _rate),
        "download_limit": at.get(table, "download_limit", _rate),
        "retention": at.get(table, "retention", _retention),
        "resources": at.get(table, "resources", _resources) or Resources(),
        "hooks": at.get(table, "hooks", _hooks) or Hooks(),
    }
    if not paths or not targets:
        return None
    return Backup(name=name, paths=paths, repositories=targets, **optional)


# ------------------------------------------------------------------ daemon and metrics


def _setting(entries: Entries, name: str, convert: Callable[[Any, At], T]) -> T | None:
    """The converted value of a [daemon] or [metrics] key, from whichever file set it."""
    if name not in entries:
        return None
    value, at = entries[name]
    return at.attempt(value, convert)


def _daemon(entries: Entries, hostname: str) -> Daemon:
    return Daemon(
        hostname=_setting(entries, "hostname", _text) or hostname,
        max_concurrent_jobs=_setting(entries, "max_concurrent_jobs", _integer(low=1)) or 1,
        upload_limit=_setting(entries, "upload_limit", _rate),
        download_limit=_setting(entries, "download_limit", _rate),
        restic=_setting(entries, "restic", _text) or "restic",
        stall_timeout=_setting(entries, "stall_timeout", _positive_duration) or STALL_TIMEOUT,
    )


def _metrics(entries: Entries) -> Metrics:
    textfile = _setting(entries, "textfile", _absolute_path)
    return Metrics(
        textfile=Path(textfile) if textfile else None,
        listen=_setting(entries, "listen", _listen),
    )
