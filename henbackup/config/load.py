"""Read henbackup.toml and conf.d/*.toml into a validated `Config`.

`load_config` either returns the frozen model or raises ConfigError carrying every problem
of every file at once. This module reads the files (the main one, then conf.d/*.toml in name
order), replaces ${NAME} from the environment and merges them: each [daemon] or [metrics]
key, and each repository or backup name, comes from one file only (the keys schema.py
declares). validate.py checks the merged document. No message shows a secret, nor any text
that came from a ${NAME}.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from henbackup.config.convert import CREDENTIALS_LATER, CREDENTIALS_PLACEHOLDER
from henbackup.config.model import Config
from henbackup.config.problems import At, Run, expanded, type_name, unknown_key
from henbackup.config.schema import DAEMON, METRICS, NAME_MAX, NAME_RE, TOP
from henbackup.config.validate import Entries, Sections, to_config
from henbackup.errors import ConfigError, Problem

# `$${` is an escaped `${`; `${NAME}` a reference; any other `${` is malformed.
MAX_DEPTH = 32  # deeper than any setting: refused before anything walks it
_REFERENCE_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")


# ----------------------------------------------------------------------------- ${NAME}


CREDENTIALS = "CREDENTIALS_DIRECTORY"


def _expand(value: Any, at: At) -> Any:
    """value with ${NAME} replaced in every string, however deeply nested."""
    if isinstance(value, str):
        return _expand_string(value, at)
    if isinstance(value, list):
        return [_expand(element, at.index(i)) for i, element in enumerate(value)]
    if isinstance(value, dict):
        return {name: _expand(element, at.key(name)) for name, element in value.items()}
    return value


def _expand_string(text: str, at: At) -> str:
    """text with references replaced: an Expanded when the environment supplied any."""
    if "${" not in text:
        return text
    env, used, missing, malformed, deferred = at.run.env, [], [], [], []

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$${":
            return "${"
        if match[1] is None:
            malformed.append(True)
        elif match[1] == CREDENTIALS and match[1] not in env and at.run.deferred is not None:
            deferred.append(True)  # set by systemd for the service only
            return CREDENTIALS_PLACEHOLDER
        elif match[1] not in env:
            missing.append(match[1])
        else:
            used.append(env[match[1]])
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
    if deferred and at.run.deferred is not None:
        at.run.deferred.append(Problem(at.file, at.path, CREDENTIALS_LATER))
    return expanded(result, used) if used else result


# ------------------------------------------------------------------------------ files


def _config_files(path: Path, run: Run) -> list[Path]:
    """The main file, then conf.d/*.toml next to it in name order (hidden files skipped)."""
    directory = path.parent / "conf.d"
    try:  # not Path.glob, which takes a directory it may not list for an empty one
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if _is_config_file(e)]
    except FileNotFoundError:
        names = []
    except OSError as error:
        run.problems.append(Problem(str(directory), "", f"cannot be listed: {error.strerror}"))
        names = []
    return [path, *(directory / name for name in sorted(names))]


def _is_config_file(entry: os.DirEntry[str]) -> bool:
    """A conf.d entry to read: *.toml, not hidden, a file or a link (one to nothing is read,
    and said to be broken: a moved file's backups must not silently vanish)."""
    if not entry.name.endswith(".toml") or entry.name.startswith("."):
        return False
    try:
        return entry.is_symlink() or entry.is_file()
    except OSError:
        return False


def _read(path: Path, run: Run, is_main: bool) -> dict[str, Any] | None:
    """The parsed document, or None after recording why it could not be read."""

    def fail(message: str) -> None:
        run.problems.append(Problem(str(path), "", message))

    try:
        document = tomllib.loads(_contents(path).decode("utf-8"))
        if _depth(document) > MAX_DEPTH:  # later steps recurse once per level
            fail(f"tables or arrays are nested more than {MAX_DEPTH} deep: no setting is")
            return None
        return document
    except FileNotFoundError:
        if path.is_symlink():
            fail(f"a link to {os.readlink(path)}, which does not exist: fix or remove the link")
        else:
            hint = ": create it, or point --config or HENBACKUP_CONFIG to the right file"
            fail("file not found" + (hint if is_main else ""))
    except IsADirectoryError:
        fail("is a directory: name the configuration file itself")
    except _Unfit as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot be read: {error.strerror}: check its permissions")
    except UnicodeDecodeError:
        fail("is not UTF-8 text: save it as UTF-8")
    except tomllib.TOMLDecodeError as error:
        run.problems.append(_toml_problem(path, str(error)))
    except RecursionError:  # tomllib recurses once per nested array or inline table
        fail("invalid TOML: arrays or tables are nested too deeply: flatten them")
    return None


# No configuration is near this size; a bigger file (a log or an image named by mistake)
# is not read whole into the daemon's memory.
MAX_CONFIG_BYTES = 4 << 20


class _Unfit(Exception):
    """The file is no configuration file to read; the message says why (a Problem's)."""


def _contents(path: Path) -> bytes:
    """The bytes of the regular file at `path` (links followed). Raises OSError (as
    reading does; IsADirectoryError for a directory), or _Unfit for another kind of file or
    one over MAX_CONFIG_BYTES."""
    # O_NONBLOCK: opening a FIFO waits for a writer (check-config hung, the daemon froze at
    # reload); a regular file's reads ignore it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise _Unfit("is not a regular file: name the configuration file itself")
        return _read_at_most(fd, MAX_CONFIG_BYTES)
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int) -> bytes:
    """All that `fd` holds; raises _Unfit past `limit` bytes (st_size is not trusted: it
    may grow, and /proc's files say 0)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _Unfit(f"is over {limit >> 20} MiB: no configuration is that big")
    return b"".join(chunks)


_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)$")
_TABLE_HEADER = re.compile(r"\s*\[\[?([^\[\]]+)\]\]?\s*(#.*)?$")


def _toml_problem(path: Path, message: str) -> Problem:
    """tomllib's message; or, for a table or key given twice (tomllib names neither, nor
    what to do), one naming it as written: the table's header, or the key on its line after
    the header above it. A line's value is never shown: it may be a secret."""
    at = _TOML_AT.search(message)
    lines = _lines(path)[: int(at[1])] if at else []
    if lines and message.startswith(("Cannot declare", "Cannot overwrite a value")):
        where = f"({at[0][1:-1]})" if at else ""
        if header := _TABLE_HEADER.match(lines[-1]):
            table = header[1].strip()
            return Problem(str(path), table, f"table declared twice {where}: merge them")
        # The key, if its line is a whole key = value: the end of a multi-line string may
        # hold an "=" too, and what is before it is part of the value.
        key = lines[-1].split("=", 1)[0].strip() if _whole(lines[-1]) else ""
        headers = (_TABLE_HEADER.match(line) for line in reversed(lines[:-1]))
        table = next((header[1].strip() + "." for header in headers if header), "")
        if key:
            return Problem(str(path), table + key, f"set twice {where}: keep one")
    return Problem(str(path), "", f"invalid TOML: {message}")


def _whole(line: str) -> bool:
    """Whether `line` is a whole TOML statement by itself."""
    try:
        tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return False
    return "=" in line


def _lines(path: Path) -> list[str]:
    try:
        return _contents(path).decode("utf-8").splitlines()
    except (OSError, _Unfit, UnicodeDecodeError):  # changed since it was parsed
        return []


def _depth(document: dict[str, Any]) -> int:
    """How deeply tables and arrays nest in `document` (counted without recursing)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        children = value.values() if isinstance(value, dict) else value
        stack += [(child, depth + 1) for child in children if isinstance(child, dict | list)]
    return deepest


# ---------------------------------------------------------------------------- merging


def _merge_settings(section: Any, at: At, allowed: tuple[str, ...], into: Entries) -> None:
    """[daemon] or [metrics] keys: each may be set in one file only."""
    if not isinstance(section, dict):
        at.problem(f"must be a table ([{at.path}]), not {type_name(section)}")
        return
    for name, value in section.items():
        where = at.key(name)
        if name not in allowed:
            unknown_key(where, name, allowed)
        elif name in into:
            where.problem(
                f"already set in {into[name][1].file}: set each {at.path} key in one file only"
            )
        else:
            into[name] = (value, where)


def _merge_named(section: Any, at: At, what: str, into: Entries) -> None:
    """[repositories.NAME] or [backups.NAME]: each name may be defined in one file only."""
    if not isinstance(section, dict):
        at.problem(f"must be a table of {at.path} ([{at.path}.NAME]), not {type_name(section)}")
        return
    for name, value in section.items():
        where = at.key(name)
        if len(name) > NAME_MAX:
            where.problem(f"is too long for a {what} name: use at most {NAME_MAX} characters")
        elif not NAME_RE.fullmatch(name):
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


def _merge(document: dict[str, Any], at: At, into: Sections) -> None:
    """One file's document, its ${NAME} replaced, into the sections of those before it."""
    document = _expand(document, at)
    for name in document:
        if name not in TOP.names:
            unknown_key(at.key(name), name, TOP.names)
    if "daemon" in document:
        _merge_settings(document["daemon"], at.key("daemon"), DAEMON.names, into.daemon)
    if "metrics" in document:
        _merge_settings(document["metrics"], at.key("metrics"), METRICS.names, into.metrics)
    if "repositories" in document:
        _merge_named(
            document["repositories"], at.key("repositories"), "repository", into.repositories
        )
    if "backups" in document:
        _merge_named(document["backups"], at.key("backups"), "backup", into.backups)


# ----------------------------------------------------------------------------- loading


def _final_problems(run: Run, files: list[Path]) -> list[Problem]:
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
    path: Path,
    env: Mapping[str, str] = os.environ,
    hostname: str | None = None,
    deferred: list[Problem] | None = None,
) -> Config:
    """The validated configuration of `path` plus its conf.d/*.toml.

    `env` supplies ${NAME} and CREDENTIALS_DIRECTORY; `hostname` is daemon.hostname's
    default (else the system's). Raises ConfigError listing every problem found. Outside
    the service, give `deferred`: what only the service can check goes there, not a problem.
    """
    run = Run(env, deferred=deferred)
    files = _config_files(path, run)
    sections, read = Sections(), []
    for position, file in enumerate(files):
        document = _read(file, run, is_main=position == 0)
        if document is not None:
            read.append(file)
            _merge(document, At(run, str(file)), sections)
    config = to_config(sections, hostname or socket.gethostname(), tuple(read))
    problems = _final_problems(run, files)
    if problems:
        raise ConfigError(problems)
    return config
