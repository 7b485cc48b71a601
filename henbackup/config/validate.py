"""Check the merged configuration document and build the frozen `Config` from it.

schema.py declares every key with its converter and default; this module walks those
tables, and adds what spans keys: one password source, the waits of a watch, a retention
that keeps something, a hook's type, a backup's repositories, no "!" exclude with borg. A
value with a problem leaves its field out (or the whole repository, backup or hook), so that
one load reports every problem at once. Messages never quote password*, location, env,
headers, body, hook commands or urls, nor an `Expanded` (convert.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from henbackup.config import convert, schema
from henbackup.config.convert import Converter
from henbackup.config.model import (
    Backup,
    CommandHook,
    Config,
    Daemon,
    Hook,
    Hooks,
    HttpHook,
    Maintenance,
    Metrics,
    PasswordSource,
    Repository,
    Resources,
    Retention,
    Watch,
)
from henbackup.config.problems import (
    At,
    Expanded,
    Invalid,
    Run,
    did_you_mean,
    environment_values,
    show,
    type_name,
)

T = TypeVar("T")

_ANY_HOOK_KEYS = tuple(dict.fromkeys(schema.HTTP_HOOK.names + schema.COMMAND_HOOK.names))
# Converting a declared default reports nowhere: a test sees that each one is valid.
_DEFAULTS = At(Run({}), "")


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
    _borg_excludes(backups, sections)
    daemon = _daemon(sections.daemon, hostname)
    metrics = _metrics(sections.metrics)
    return Config(
        daemon=daemon,
        metrics=metrics,
        repositories=_present(repositories),
        backups=_present(backups),
        files=files,
    )


# ------------------------------------------------------------------------------- walk


def _present(items: Mapping[str, T | None]) -> dict[str, T]:
    """items without the None ones: those that were absent or invalid."""
    return {name: item for name, item in items.items() if item is not None}


def _value(table: Mapping[str, Any], at: At, key: schema.Key, converter: Converter) -> Any:
    """The converted value of `key`, else its converted default; None when neither."""
    if key.required:
        value = at.require(table, key.name, converter)
    else:
        value = at.get(table, key.name, converter)
    return _default(key, converter) if value is None else value


def _default(key: schema.Key, converter: Converter | None = None) -> Any:
    """The model's value of the key's declared default; None when it has none."""
    converter = converter or key.convert
    if key.default is None or converter is None:
        return None
    return converter(key.default, _DEFAULTS.key(key.name))


def _values(
    table: Mapping[str, Any],
    at: At,
    keys: schema.Table,
    builders: Mapping[str, Converter] = {},
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The value of each key of `keys`, in their order, converted by its declared converter
    or by the builder of its name (a table, or a value that needs context)."""
    values = {}
    for key in keys.keys:
        converter = builders.get(key.name) or key.convert
        if converter is not None and key.name not in skip:
            values[key.name] = _value(table, at, key, converter)
    return values


def _record(keys: schema.Table, model: Callable[..., T]) -> Callable[[Any, At], T]:
    """The converter of a table whose keys are each a field of `model`."""

    def build(value: Any, at: At) -> T:
        return model(**_present(_values(convert.table(value, at, keys.names), at, keys)))

    return build


# ------------------------------------------------------------------------ repositories

_PASSWORD_KINDS = {
    "password": "password",
    "password_file": "file",
    "password_command": "command",
    "password_credential": "file",
}


def _password(table: Mapping[str, Any], at: At) -> PasswordSource | None:
    """The one password source of a repository table."""
    names = schema.REPOSITORY.exactly_one
    present = [name for name in names if name in table]
    if not present:
        at.problem(f"has no password: set one of {', '.join(names)}")
    elif len(present) > 1:
        both = f"{', '.join(present[:-1])} and {present[-1]}"
        at.problem(f"{both} are set: keep exactly one of {', '.join(names)}")
    sources = []
    for name in present:
        kind, converter = _PASSWORD_KINDS[name], schema.REPOSITORY[name].convert
        value = at.get(table, name, converter)  # type: ignore[arg-type]
        if value is not None:
            # A password taken from the environment is in no file (secrets.py).
            from_env = kind == "password" and isinstance(table[name], Expanded)
            where = "" if from_env else at.file
            sources.append(PasswordSource(kind, value, where, at.key(name).path))  # type: ignore[arg-type]
    return sources[0] if len(sources) == 1 and len(present) == 1 else None


def _repository(name: str, value: Any, at: At) -> Repository | None:
    keys = schema.REPOSITORY
    table = at.attempt(value, lambda v, a: convert.table(v, a, keys.names))
    if table is None:
        return None
    location = at.require(table, "location", convert.one_line)
    password = _password(table, at)
    maintenance = {"check": _record(schema.CHECK, Maintenance)}
    maintenance["prune"] = _record(schema.PRUNE, Maintenance)
    maintenance["resources"] = _record(schema.RESOURCES, Resources)
    optional = _values(table, at, keys, maintenance, skip=("location", *keys.exactly_one))
    in_env = {variable for variable, _ in optional["env"] or ()}
    for variable, _ in optional["env_credentials"] or ():
        if variable in in_env:
            where = at.key("env_credentials").key(variable)
            where.problem("is also set in env: set each variable in one of them")
    engine = optional["engine"] or "restic"
    _other_engines_keys(table, at, keys, engine)
    if engine == "borg" and location is not None:
        _borg_location(location, at.key("location"))
    if location is None or password is None:
        return None
    return Repository(
        name=name, location=location, password=password, file=at.file, key=at.path, **optional
    )


def _other_engines_keys(table: Mapping[str, Any], at: At, keys: schema.Table, engine: str) -> None:
    """A problem for each key set that the repository's engine does not know."""
    for key in keys.keys:
        if key.name in table and key.engines and engine not in key.engines:
            only = " or ".join(key.engines)
            at.key(key.name).problem(
                f"is for {only} repositories only, and this one has engine = {engine!r}:"
                f" remove it or change engine"
            )


def _borg_location(location: str, at: At) -> None:
    """borg opens a path or ssh://: a restic backend's location is a mistake (the scheme
    alone is quoted: a location may hold credentials)."""
    scheme = location.partition(":")[0]
    if ":" in location and scheme in schema.RESTIC_ONLY_SCHEMES:
        at.problem(
            f"is a restic {scheme}: location, and this repository has engine = 'borg':"
            " use a path or ssh://USER@HOST/PATH, or engine = 'restic'"
        )


# ----------------------------------------------------------------------------- backups


def _watch(value: Any, at: At) -> Watch | None:
    """`true` (defaults), `false` (no watch) or {wait_min, wait_max}."""
    if isinstance(value, bool):
        return Watch() if value else None
    if not isinstance(value, dict):
        raise Invalid(
            f"must be true, false or a table {{ wait_min, wait_max }}, not {type_name(value)}"
        )
    waits = schema.WATCH
    table = convert.table(value, at, waits.names)
    given = {name: at.get(table, name, waits[name].convert) for name in waits.names}  # type: ignore[arg-type]
    if any(given[name] is None for name in waits.names if name in table):
        return None  # already reported
    watch = Watch(**{name: _default(waits[name]) if v is None else v for name, v in given.items()})
    if watch.wait_max < watch.wait_min and "wait_max" in table:
        at.key("wait_max").problem("is shorter than wait_min: make it at least wait_min")
    elif watch.wait_max < watch.wait_min:
        at.key("wait_min").problem(
            f"is longer than the default wait_max ({watch.wait_max:g}s): set wait_max too"
        )
    return watch


def _retention(value: Any, at: At) -> Retention:
    table = convert.table(value, at, schema.RETENTION.names)
    rules = _values(table, at, schema.RETENTION)
    all_valid = all(rules[name] is not None for name in rules if name in table)
    if all_valid and not any(rules.values()):  # restic would refuse, or forget everything
        at.problem("keeps nothing: set a keep_* rule above 0 or keep_within, e.g. keep_daily = 7")
    return Retention(**rules)


def _hook(value: Any, at: At) -> Hook | None:
    """One hook table: type = "http" or "command" decides the other keys."""
    convert.expect(value, dict, "a table")
    kind = value.get("type")
    # What the environment put into a hook (a ping URL's token, a header) is never shown.
    secrets = tuple(v for v in environment_values(value) if v)
    if kind == "http":
        http = _values(convert.table(value, at, schema.HTTP_HOOK.names), at, schema.HTTP_HOOK)
        hook = HttpHook(**_present(http)) if http["url"] is not None else None
        return hook and replace(hook, secrets=secrets)
    if kind == "command":
        keys = schema.COMMAND_HOOK
        given = _values(convert.table(value, at, keys.names), at, keys)
        command = CommandHook(**_present(given)) if given["command"] is not None else None
        return command and replace(command, secrets=secrets)
    if "type" in value:
        at.key("type").problem(f'{show(kind)} is not a hook type: use "http" or "command"')
    else:
        at.key("type").problem('is required: set type = "http" or type = "command"')
    convert.table(value, at, _ANY_HOOK_KEYS)
    return None


def _hook_list(value: Any, at: At) -> tuple[Hook, ...]:
    convert.expect(value, list, "an array of tables ([[...hooks.before]] or [{ type = ... }])")
    hooks = (at.index(i).attempt(element, _hook) for i, element in enumerate(value))
    return tuple(hook for hook in hooks if hook is not None)


def _hooks(value: Any, at: At) -> Hooks:
    table = convert.table(value, at, schema.HOOKS.names)
    lists = _values(table, at, schema.HOOKS, dict.fromkeys(schema.HOOKS.names, _hook_list))
    return Hooks(**_present(lists))


def _backup_repositories(known: Mapping[str, object]) -> Callable[[Any, At], tuple[str, ...]]:
    """The repositories a backup goes to: each defined (valid or not), each listed once."""

    def repository(value: Any, at: At) -> str:
        name = convert.text(value, at)
        if name not in known:
            hint = did_you_mean(name, known) if not isinstance(value, Expanded) else ""
            hint = hint or ": define it under [repositories.NAME] or fix the name"
            raise Invalid(f"repository {show(value)} is not defined{hint}")
        return name

    repositories = convert.array(repository, required="list the repositories to back up to")

    def converter(value: Any, at: At) -> tuple[str, ...]:
        names = repositories(value, at)
        for position, name in enumerate(names):
            if name in names[:position]:
                at.problem(f'lists repository "{name}" twice: list it once')
        return names

    return converter


def _backup(name: str, value: Any, at: At, repositories: Mapping[str, object]) -> Backup | None:
    keys = schema.BACKUP
    table = at.attempt(value, lambda v, a: convert.table(v, a, keys.names))
    if table is None:
        return None
    builders = {
        "repositories": _backup_repositories(repositories),
        "watch": _watch,
        "retention": _retention,
        "resources": _record(schema.RESOURCES, Resources),
        "hooks": _hooks,
    }
    values = _values(table, at, keys, builders)
    if not values["paths"] or not values["repositories"]:
        return None
    return Backup(name=name, file=at.file, key=at.path, **values)


def _borg_excludes(backups: Mapping[str, Backup | None], sections: Sections) -> None:
    """borg has no re-include: a backup with a borg repository refuses restic's "!" excludes
    (borg would take one as a literal exclude, and back up less than restic)."""
    borg = {
        name
        for name, (value, _) in sections.repositories.items()
        if isinstance(value, Mapping) and value.get("engine") == "borg"
    }
    for name, backup in backups.items():
        on_borg = [repo for repo in backup.repositories if repo in borg] if backup else []
        if not backup or not on_borg:
            continue
        at = sections.backups[name][1].key("excludes")
        for position, pattern in enumerate(backup.excludes):
            if pattern.startswith("!"):
                at.index(position).problem(
                    f're-includes ("!"), which borg cannot (repository "{on_borg[0]}" is'
                    " borg's): narrow the other excludes instead, or back up to restic only"
                )


# ------------------------------------------------------------------ daemon and metrics


def _settings(entries: Entries, keys: schema.Table) -> dict[str, Any]:
    """The converted values of [daemon] or [metrics], each from whichever file set it."""
    values = {}
    for key in keys.keys:
        value, at = entries.get(key.name, (None, None))
        converted = at.attempt(value, key.convert) if at else None  # type: ignore[arg-type]
        values[key.name] = _default(key) if converted is None else converted
    return values


def _daemon(entries: Entries, hostname: str) -> Daemon:
    settings = _settings(entries, schema.DAEMON)
    return Daemon(**{**settings, "hostname": settings["hostname"] or hostname})


def _metrics(entries: Entries) -> Metrics:
    settings = _settings(entries, schema.METRICS)
    textfile = settings["textfile"]
    return Metrics(textfile=Path(textfile) if textfile else None, listen=settings["listen"])
