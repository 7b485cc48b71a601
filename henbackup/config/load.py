"""Read henbackup.toml and conf.d/*.toml into a validated `Config`.

`load_config` either returns the frozen model or raises ConfigError carrying every problem
of every file at once. Messages never show a secret: values of password*, location, env,
headers, body, hook commands and urls are never quoted, nor any string that took text
from the environment through `${NAME}`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from henbackup.config import cron, units
from henbackup.config.model import (
    INFERIOR,
    NORMAL,
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
from henbackup.errors import ConfigError, Problem

T = TypeVar("T")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_METHOD_RE = re.compile(r"[A-Za-z]+")
_RESTIC_DURATION_RE = re.compile(r"(?:[0-9]+y)?(?:[0-9]+m)?(?:[0-9]+d)?(?:[0-9]+h)?")
_SUBSET_FRACTION_RE = re.compile(r"([0-9]{1,18})/([0-9]{1,18})")
_SUBSET_SIZE_RE = re.compile(r"[0-9]{1,18}[KMGT]?", re.IGNORECASE)
# `$${` is an escaped `${`; `${NAME}` a reference; any other `${` is malformed.
_REFERENCE_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")

_TOP_KEYS = ("daemon", "metrics", "repositories", "backups")
_DAEMON_KEYS = ("hostname", "max_concurrent_jobs", "upload_limit", "download_limit", "restic")
_METRICS_KEYS = ("textfile", "listen")
_PASSWORD_KEYS = ("password", "password_file", "password_command", "password_credential")
_REPOSITORY_KEYS = (
    "location",
    *_PASSWORD_KEYS,
    *("env", "options", "upload_limit", "download_limit", "check", "prune"),
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
_ON_FAILURE = ("ignore", "continue", "stop")
_IONICE = ("idle", "best-effort", "realtime")


class _Expanded(str):
    """A string that took text from the environment: a message never shows it."""

    __slots__ = ()


class _Invalid(Exception):
    """A problem with the value being converted, at the converter's own key path."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Run:
    """What one load_config call accumulates."""

    env: Mapping[str, str]
    problems: list[Problem] = field(default_factory=list)
    expansion: list[Problem] = field(default_factory=list)  # failed ${}, reported first
    broken: set[tuple[str, str]] = field(default_factory=set)  # (file, key) of failed ${}


@dataclass(frozen=True)
class _At:
    """A key path in one file: where converters report problems."""

    run: _Run
    file: str
    path: str = ""

    def key(self, name: str) -> _At:
        part = name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name, ensure_ascii=False)
        return _At(self.run, self.file, f"{self.path}.{part}" if self.path else part)

    def index(self, position: int) -> _At:
        return _At(self.run, self.file, f"{self.path}[{position}]")

    def problem(self, message: str) -> None:
        self.run.problems.append(Problem(self.file, self.path, message))

    def attempt(self, value: Any, convert: Callable[[Any, _At], T]) -> T | None:
        """convert(value), or None after recording its problem."""
        try:
            return convert(value, self)
        except _Invalid as invalid:
            self.problem(invalid.message)
            return None

    def get(
        self, table: Mapping[str, Any], name: str, convert: Callable[[Any, _At], T]
    ) -> T | None:
        """The converted value of an optional key, None when absent or invalid."""
        return self.key(name).attempt(table[name], convert) if name in table else None

    def require(
        self, table: Mapping[str, Any], name: str, convert: Callable[[Any, _At], T]
    ) -> T | None:
        """Like get, but a missing key is a problem."""
        if name not in table:
            self.key(name).problem("is required: add it")
            return None
        return self.get(table, name, convert)


# ---------------------------------------------------------------------------- messages


def _type_name(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        list: "an array",
        dict: "a table",
    }
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a string" if isinstance(value, str) else "a date or time"


def _show(value: object) -> str:
    """The value as a message may quote it; text from the environment is never shown."""
    if isinstance(value, _Expanded):
        return "the value (from the environment)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    return _type_name(value)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> None:
    """Raise _Invalid unless value is of `kind` (booleans are never integers)."""
    if isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
        return
    raise _Invalid(f"must be {what}, not {_type_name(value)}")


def _from_parser(parse: Callable[[Any], T]) -> Callable[[Any, _At], T]:
    """A converter from a units-style parser: its reason follows the shown value."""

    def convert(value: Any, at: _At) -> T:
        try:
            return parse(value)
        except ValueError as error:
            raise _Invalid(f"{_show(value)} is {error}") from None

    return convert


# -------------------------------------------------------------------------- converters


def _table(value: Any, at: _At, allowed: tuple[str, ...]) -> dict[str, Any]:
    """value as a table, after reporting each key not in `allowed`."""
    _expect(value, dict, "a table")
    for name in value:
        if name not in allowed:
            _unknown_key(at.key(name), name, allowed)
    return value


def _unknown_key(at: _At, name: str, allowed: tuple[str, ...]) -> None:
    hint = _did_you_mean(name, allowed) or f": remove it, or use one of: {', '.join(allowed)}"
    at.problem(f"unknown key{hint}")


def _text(value: Any, at: _At) -> str:
    """A non-empty string; never quoted, so it suits secrets."""
    _expect(value, str, "a string")
    if not value:
        raise _Invalid("must not be empty")
    return str(value)


def _absolute_path(value: Any, at: _At) -> str:
    _expect(value, str, "a string")
    if not value.startswith("/"):
        raise _Invalid(f"{_show(value)} is not an absolute path: write it from the root, /...")
    return str(value)


def _integer(low: int | None = None, high: int | None = None) -> Callable[[Any, _At], int]:
    def convert(value: Any, at: _At) -> int:
        _expect(value, int, "an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise _Invalid(f"{value} is out of range: use a number {bounds}")
        return int(value)

    return convert


def _choice(options: tuple[str, ...]) -> Callable[[Any, _At], str]:
    def convert(value: Any, at: _At) -> str:
        _expect(value, str, "a string")
        if value not in options:
            raise _Invalid(f"{_show(value)} is not one of {', '.join(options)}")
        return str(value)

    return convert


def _array(
    item: Callable[[Any, _At], T], required: str = ""
) -> Callable[[Any, _At], tuple[T, ...]]:
    """An array whose items each convert with `item`; `required` is the hint when empty."""

    def convert(value: Any, at: _At) -> tuple[T, ...]:
        _expect(value, list, "an array")
        if required and not value:
            raise _Invalid(f"must not be empty: {required}")
        converted = (at.index(i).attempt(element, item) for i, element in enumerate(value))
        return tuple(element for element in converted if element is not None)

    return convert


def _string_table(
    name_re: re.Pattern[str], what: str
) -> Callable[[Any, _At], tuple[tuple[str, str], ...]]:
    """A table of names to strings (env, headers): values are never quoted."""

    def convert(value: Any, at: _At) -> tuple[tuple[str, str], ...]:
        _expect(value, dict, "a table")
        pairs = []
        for name, text in value.items():
            if not name_re.fullmatch(name):
                at.key(name).problem(f"is not a valid {what}")
            elif isinstance(text, str):
                pairs.append((name, str(text)))
            else:
                at.key(name).problem(f"must be a string, not {_type_name(text)}")
        return tuple(pairs)

    return convert


_env_table = _string_table(_ENV_NAME_RE, "environment variable name (letters, digits, _)")
_duration = _from_parser(units.parse_duration)
_rate = _from_parser(units.parse_rate)
_size = _from_parser(units.parse_size)
_priority = _from_parser(units.parse_priority)
_percent = _from_parser(units.parse_percent)
_listen = _from_parser(units.parse_listen)


def _positive_duration(value: Any, at: _At) -> float:
    seconds = _duration(value, at)
    if seconds <= 0:
        raise _Invalid(f"{_show(value)} is too short: use a duration above 0")
    return seconds


def _schedule_entry(value: Any, at: _At) -> ScheduleEntry:
    """A cron expression (has a space, or is an @macro) or an interval."""
    _expect(value, str, "a string")
    if any(c.isspace() for c in value.strip()) or value.startswith("@"):
        try:
            cron.parse_cron(value)
        except ValueError as error:
            if isinstance(value, _Expanded):
                raise _Invalid(
                    "the value (from the environment) is not a cron expression"
                ) from None
            hint = ' (an interval has no spaces: "1h30m")' if len(value.split()) < 5 else ""
            raise _Invalid(f"{_show(value)} is not a cron expression: {error}{hint}") from None
        return Cron(str(value).strip())
    return Interval(_positive_duration(value, at), str(value))


_schedule = _array(_schedule_entry)


# ------------------------------------------------------------------------ repositories


def _credential(value: Any, at: _At) -> str:
    """The file of a systemd credential: $CREDENTIALS_DIRECTORY/<name>."""
    name = _text(value, at)
    if "/" in name or name in (".", ".."):
        raise _Invalid("must be a credential name, as in LoadCredential=NAME:PATH (no /)")
    directory = at.run.env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise _Invalid(
            "CREDENTIALS_DIRECTORY is not set: pass the credential with systemd's "
            "LoadCredential= (or LoadCredentialEncrypted=), or use password_file"
        )
    return f"{directory.rstrip('/')}/{name}"


_PASSWORD_CONVERTERS: dict[str, tuple[str, Callable[[Any, _At], str]]] = {
    "password": ("password", _text),
    "password_file": ("file", _absolute_path),
    "password_command": ("command", _text),
    "password_credential": ("file", _credential),
}


def _password(table: Mapping[str, Any], at: _At) -> PasswordSource | None:
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
            sources.append(PasswordSource(kind, value))  # type: ignore[arg-type]
    return sources[0] if len(sources) == 1 and len(present) == 1 else None


def _subset(value: Any, at: _At) -> str:
    """restic's --read-data-subset: "5%", "1/10" or a size such as "500M"."""
    _expect(value, str, "a string")
    text = str(value)
    hint = 'use a percentage ("5%"), a fraction ("1/10") or a size ("500M")'
    if text.endswith("%"):
        if _percent(text, at) > 1:
            raise _Invalid(f"{_show(value)} is too large: use at most 100%")
    elif match := _SUBSET_FRACTION_RE.fullmatch(text):
        if not 1 <= int(match[1]) <= int(match[2]):
            raise _Invalid(f"{_show(value)} is not a fraction n/m with 1 <= n <= m: {hint}")
    elif not _SUBSET_SIZE_RE.fullmatch(text) or int(text.rstrip("KMGTkmgt")) == 0:
        raise _Invalid(f"{_show(value)} is not a data subset: {hint}")
    return text


def _maintenance(is_check: bool) -> Callable[[Any, _At], Maintenance]:
    allowed = ("schedule", "priority", "read_data_subset") if is_check else ("schedule", "priority")

    def convert(value: Any, at: _At) -> Maintenance:
        table = _table(value, at, allowed)
        return Maintenance(
            schedule=at.get(table, "schedule", _schedule) or (),
            priority=at.get(table, "priority", _priority) or INFERIOR,
            read_data_subset=at.get(table, "read_data_subset", _subset),
        )

    return convert


def _repository(name: str, value: Any, at: _At) -> Repository | None:
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
    }
    if location is None or password is None:
        return None
    return Repository(name=name, location=location, password=password, **optional)


# ----------------------------------------------------------------------------- backups


def _watch(value: Any, at: _At) -> Watch | None:
    """`true` (defaults), `false` (no watch) or {wait_min, wait_max}."""
    if isinstance(value, bool):
        return Watch() if value else None
    if not isinstance(value, dict):
        raise _Invalid(
            f"must be true, false or a table {{ wait_min, wait_max }}, not {_type_name(value)}"
        )
    table = _table(value, at, ("wait_min", "wait_max"))
    waits = {name: at.get(table, name, _duration) for name in ("wait_min", "wait_max")}
    if any(waits[name] is None for name in table if name in waits):
        return None  # already reported
    watch = Watch(**{name: wait for name, wait in waits.items() if wait is not None})
    if watch.wait_max < watch.wait_min and "wait_max" in table:
        at.key("wait_max").problem("is shorter than wait_min: make it at least wait_min")
    elif watch.wait_max < watch.wait_min:
        at.key("wait_min").problem(
            f"is longer than the default wait_max ({watch.wait_max:g}s): set wait_max too"
        )
    return watch


def _restic_duration(value: Any, at: _At) -> str:
    _expect(value, str, "a string")
    if not value or not _RESTIC_DURATION_RE.fullmatch(value):
        raise _Invalid(
            f"{_show(value)} is not a restic duration: "
            'use years, months, days, hours, largest first, e.g. "1y2m3d4h"'
        )
    return str(value)


def _retention(value: Any, at: _At) -> Retention:
    table = _table(value, at, (*_RETENTION_COUNTS, "keep_within"))
    rules: dict[str, Any] = {
        name: at.get(table, name, _integer(low=0)) for name in _RETENTION_COUNTS
    }
    rules["keep_within"] = at.get(table, "keep_within", _restic_duration)
    all_valid = all(rules[name] is not None for name in rules if name in table)
    if all_valid and not any(rules.values()):  # restic would refuse, or forget everything
        at.problem("keeps nothing: set a keep_* rule above 0 or keep_within, e.g. keep_daily = 7")
    return Retention(**rules)


def _resources(value: Any, at: _At) -> Resources:
    table = _table(value, at, _RESOURCES_KEYS)
    return Resources(
        cpu_weight=at.get(table, "cpu_weight", _integer(1, 10000)),
        io_weight=at.get(table, "io_weight", _integer(1, 10000)),
        cpu_quota=at.get(table, "cpu_quota", _percent),
        memory_max=at.get(table, "memory_max", _size),
        nice=at.get(table, "nice", _integer(-20, 19)),
        ionice=at.get(table, "ionice", _choice(_IONICE)),  # type: ignore[arg-type]
    )


def _url(value: Any, at: _At) -> str:
    _expect(value, str, "a string")
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        valid = False
    if not valid:
        raise _Invalid("must be an http:// or https:// URL with a host")
    return str(value)


def _method(value: Any, at: _At) -> str:
    _expect(value, str, "a string")
    if not _METHOD_RE.fullmatch(value):
        raise _Invalid(f"{_show(value)} is not an HTTP method such as POST or GET")
    return str(value).upper()


def _body(value: Any, at: _At) -> str:
    _expect(value, str, "a string")
    return str(value)


def _argv(value: Any, at: _At) -> tuple[str, ...]:
    """A command as an argument list (no shell); arguments are never quoted."""
    _expect(value, list, 'an array of strings, e.g. ["/usr/bin/pg_dump", "-f", "/backup/db.sql"]')
    if not value:
        raise _Invalid(
            'must not be empty: give the program and its arguments, e.g. ["/usr/bin/true"]'
        )
    for position, argument in enumerate(value):
        if not isinstance(argument, str):
            at.index(position).problem(f"must be a string, not {_type_name(argument)}")
    if isinstance(value[0], str) and not value[0]:
        at.index(0).problem("must not be empty: give the program to run")
    return tuple(str(argument) for argument in value)


def _hook_fields(kind: str, table: Mapping[str, Any], at: _At) -> dict[str, Any]:
    """The keyword arguments of an HttpHook or CommandHook, defaults left out."""
    common = {
        "timeout": at.get(table, "timeout", _positive_duration),
        "on_failure": at.get(table, "on_failure", _choice(_ON_FAILURE)),
    }
    if kind == "http":
        specific = {
            "url": at.require(table, "url", _url),
            "method": at.get(table, "method", _method),
            "headers": at.get(table, "headers", _string_table(_HEADER_NAME_RE, "HTTP header name")),
            "body": at.get(table, "body", _body),
            "retries": at.get(table, "retries", _integer(low=0)),
        }
    else:
        specific = {
            "command": at.require(table, "command", _argv),
            "env": at.get(table, "env", _env_table),
            "cwd": at.get(table, "cwd", _absolute_path),
        }
    return {name: value for name, value in {**common, **specific}.items() if value is not None}


def _hook(value: Any, at: _At) -> Hook | None:
    """One hook table: type = "http" or "command" decides the other keys."""
    _expect(value, dict, "a table")
    kind = value.get("type")
    if kind not in ("http", "command"):
        if "type" in value:
            at.key("type").problem(f'{_show(kind)} is not a hook type: use "http" or "command"')
        else:
            at.key("type").problem('is required: set type = "http" or type = "command"')
        _table(value, at, tuple(dict.fromkeys(_HTTP_HOOK_KEYS + _COMMAND_HOOK_KEYS)))
        return None
    table = _table(value, at, _HTTP_HOOK_KEYS if kind == "http" else _COMMAND_HOOK_KEYS)
    fields = _hook_fields(kind, table, at)
    required = "url" if kind == "http" else "command"
    if required not in fields:
        return None
    return HttpHook(**fields) if kind == "http" else CommandHook(**fields)


def _hook_list(value: Any, at: _At) -> tuple[Hook, ...]:
    _expect(value, list, "an array of tables ([[...hooks.before]] or [{ type = ... }])")
    hooks = (at.index(i).attempt(element, _hook) for i, element in enumerate(value))
    return tuple(hook for hook in hooks if hook is not None)


def _hooks(value: Any, at: _At) -> Hooks:
    table = _table(value, at, _HOOK_MOMENTS)
    lists = {moment: at.get(table, moment, _hook_list) or () for moment in _HOOK_MOMENTS}
    return Hooks(**lists)


def _repository_names(known: Mapping[str, object]) -> Callable[[Any, _At], str]:
    def convert(value: Any, at: _At) -> str:
        name = _text(value, at)
        if name not in known:
            hint = _did_you_mean(name, known) if not isinstance(value, _Expanded) else ""
            hint = hint or ": define it under [repositories.NAME] or fix the name"
            raise _Invalid(f"repository {_show(value)} is not defined{hint}")
        return name

    return convert


def _backup_repositories(value: Any, at: _At, known: Mapping[str, object]) -> tuple[str, ...]:
    names = _array(_repository_names(known), required="list the repositories to back up to")(
        value, at
    )
    for position, name in enumerate(names):
        if name in names[:position]:
            at.problem(f'lists repository "{name}" twice: list it once')
    return names


def _backup(name: str, value: Any, at: _At, repositories: Mapping[str, object]) -> Backup | None:
    table = at.attempt(value, lambda v, a: _table(v, a, _BACKUP_KEYS))
    if table is None:
        return None
    paths = at.require(
        table, "paths", _array(_absolute_path, required="list absolute paths to back up")
    )
    targets = at.require(
        table, "repositories", lambda v, a: _backup_repositories(v, a, repositories)
    )
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


def _daemon(values: Mapping[str, tuple[Any, _At]], hostname: str) -> Daemon:
    def get(name: str, convert: Callable[[Any, _At], T]) -> T | None:
        if name not in values:
            return None
        value, at = values[name]
        return at.attempt(value, convert)

    return Daemon(
        hostname=get("hostname", _text) or hostname,
        max_concurrent_jobs=get("max_concurrent_jobs", _integer(low=1)) or 1,
        upload_limit=get("upload_limit", _rate),
        download_limit=get("download_limit", _rate),
        restic=get("restic", _text) or "restic",
    )


def _metrics(values: Mapping[str, tuple[Any, _At]]) -> Metrics:
    textfile = values.get("textfile")
    listen = values.get("listen")
    path = textfile[1].attempt(textfile[0], _absolute_path) if textfile else None
    return Metrics(
        textfile=Path(path) if path else None,
        listen=listen[1].attempt(listen[0], _listen) if listen else None,
    )


# ----------------------------------------------------------------- files and ${NAME}


def _expand(value: Any, at: _At) -> Any:
    """value with ${NAME} replaced in every string, however deeply nested."""
    if isinstance(value, str):
        return _expand_string(value, at)
    if isinstance(value, list):
        return [_expand(element, at.index(i)) for i, element in enumerate(value)]
    if isinstance(value, dict):
        return {name: _expand(element, at.key(name)) for name, element in value.items()}
    return value


def _expand_string(text: str, at: _At) -> str:
    """text with references replaced: an _Expanded when the environment supplied any."""
    if "${" not in text:
        return text
    env, used, missing, malformed = at.run.env, [], [], []

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$${":
            return "${"
        if match[1] is None:
            malformed.append(True)
        elif match[1] not in env:
            missing.append(match[1])
        else:
            used.append(match[1])
            return env[match[1]]
        return ""

    result = _REFERENCE_RE.sub(replace, text)
    messages = [
        f"environment variable {name} is not set: "
        "set it in the service's environment or remove the reference"
        for name in dict.fromkeys(missing)
    ]
    if malformed:
        messages.append("has a ${ that is not a ${NAME} reference: write $${ for a literal ${")
    at.run.expansion += [Problem(at.file, at.path, message) for message in messages]
    if messages:
        at.run.broken.add((at.file, at.path))
    return _Expanded(result) if used else result


def _config_files(path: Path, run: _Run) -> list[Path]:
    """The main file, then conf.d/*.toml next to it in name order (hidden files skipped)."""
    directory = path.parent / "conf.d"
    try:
        extra = sorted(
            (p for p in directory.glob("*.toml") if not p.name.startswith(".") and p.is_file()),
            key=lambda p: p.name,
        )
    except OSError as error:
        run.problems.append(Problem(str(directory), "", f"cannot be listed: {error.strerror}"))
        extra = []
    return [path, *extra]


def _read(path: Path, run: _Run, is_main: bool) -> dict[str, Any] | None:
    """The parsed document, or None after recording why it could not be read."""

    def fail(message: str) -> None:
        run.problems.append(Problem(str(path), "", message))

    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        hint = ": create it, or point --config or HENBACKUP_CONFIG to the right file"
        fail("file not found" + (hint if is_main else ""))
    except OSError as error:
        fail(f"cannot be read: {error.strerror}: check its permissions")
    except UnicodeDecodeError:
        fail("is not UTF-8 text: save it as UTF-8")
    except tomllib.TOMLDecodeError as error:
        fail(f"invalid TOML: {error}")
    except RecursionError:  # tomllib recurses once per nested array or inline table
        fail("invalid TOML: arrays or tables are nested too deeply: flatten them")
    return None


@dataclass
class _Merged:
    """Every file's sections merged: each entry keeps the key path of its own file."""

    daemon: dict[str, tuple[Any, _At]] = field(default_factory=dict)
    metrics: dict[str, tuple[Any, _At]] = field(default_factory=dict)
    repositories: dict[str, tuple[Any, _At]] = field(default_factory=dict)
    backups: dict[str, tuple[Any, _At]] = field(default_factory=dict)


def _merge_settings(
    section: Any, at: _At, allowed: tuple[str, ...], into: dict[str, tuple[Any, _At]]
) -> None:
    """[daemon] or [metrics] keys: each may be set in one file only."""
    if not isinstance(section, dict):
        at.problem(f"must be a table ([{at.path}]), not {_type_name(section)}")
        return
    for name, value in section.items():
        where = at.key(name)
        if name not in allowed:
            _unknown_key(where, name, allowed)
        elif name in into:
            where.problem(
                f"already set in {into[name][1].file}: set each {at.path} key in one file only"
            )
        else:
            into[name] = (value, where)


def _merge_named(section: Any, at: _At, what: str, into: dict[str, tuple[Any, _At]]) -> None:
    """[repositories.NAME] or [backups.NAME]: each name may be defined in one file only."""
    if not isinstance(section, dict):
        at.problem(f"must be a table of {at.path} ([{at.path}.NAME]), not {_type_name(section)}")
        return
    for name, value in section.items():
        where = at.key(name)
        if not _NAME_RE.fullmatch(name):
            where.problem(
                f"is not a valid {what} name: start with a letter or digit, then use only "
                "letters, digits, _, . and -"
            )
        elif name in into:
            where.problem(
                f"already defined in {into[name][1].file}: define each {what} in one file only"
            )
        else:
            into[name] = (value, where)


def _merge(document: dict[str, Any], at: _At, merged: _Merged) -> None:
    document = _expand(document, at)
    _table(document, at, _TOP_KEYS)
    if "daemon" in document:
        _merge_settings(document["daemon"], at.key("daemon"), _DAEMON_KEYS, merged.daemon)
    if "metrics" in document:
        _merge_settings(document["metrics"], at.key("metrics"), _METRICS_KEYS, merged.metrics)
    if "repositories" in document:
        _merge_named(
            document["repositories"], at.key("repositories"), "repository", merged.repositories
        )
    if "backups" in document:
        _merge_named(document["backups"], at.key("backups"), "backup", merged.backups)


def _final_problems(run: _Run, files: list[Path]) -> list[Problem]:
    """Problems in file order, without those that a failed ${} (already reported) caused."""

    def caused_by_expansion(problem: Problem) -> bool:
        return any(
            problem.file == file
            and problem.key.startswith(key)
            and problem.key[len(key) : len(key) + 1] in ("", ".", "[")
            for file, key in run.broken
        )

    order = {str(path): position for position, path in enumerate(files)}
    kept = [problem for problem in run.problems if not caused_by_expansion(problem)]
    return sorted(run.expansion + kept, key=lambda problem: order.get(problem.file, -1))


def load_config(
    path: Path, env: Mapping[str, str] = os.environ, hostname: str | None = None
) -> Config:
    """The validated configuration of `path` plus its conf.d/*.toml.

    `env` supplies ${NAME} and CREDENTIALS_DIRECTORY; `hostname` is daemon.hostname's
    default (else the system's). Raises ConfigError listing every problem found.
    """
    run = _Run(env)
    files = _config_files(path, run)
    merged, read = _Merged(), []
    for position, file in enumerate(files):
        document = _read(file, run, is_main=position == 0)
        if document is not None:
            read.append(file)
            _merge(document, _At(run, str(file)), merged)
    repositories = {
        name: _repository(name, value, at) for name, (value, at) in merged.repositories.items()
    }
    backups = {
        name: _backup(name, value, at, merged.repositories)
        for name, (value, at) in merged.backups.items()
    }
    daemon = _daemon(merged.daemon, hostname or socket.gethostname())
    metrics = _metrics(merged.metrics)
    problems = _final_problems(run, files)
    if problems:
        raise ConfigError(problems)
    return Config(
        daemon=daemon,
        metrics=metrics,
        repositories={name: r for name, r in repositories.items() if r is not None},
        backups={name: b for name, b in backups.items() if b is not None},
        files=tuple(read),
    )
