"""The converters of single values, which schema.py names for each key.

Each takes a value and the `At` of its key path and returns the model's value, or raises
`Invalid` with a message that fits after the key path. Messages never quote password*,
location, env, headers, body, hook commands or urls, nor an `Expanded`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from henbackup.config import cron, units
from henbackup.config.model import Cron, Interval, ScheduleEntry
from henbackup.config.problems import At, Expanded, Invalid, show, type_name, unknown_key
from henbackup.errors import Problem
from henbackup.excludes import pattern_problem

T = TypeVar("T")
Converter = Callable[[Any, At], Any]

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# What http.client can send: Latin-1 without control characters (tab aside).
_HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_ANY_RE = re.compile(r".*", re.DOTALL)
# C0 and C1 controls and DEL: a host, a location or a path on one line has none of them.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
_CONTROL_RE = re.compile(f"[{CONTROL_CHARACTERS}]")
ONE_LINE = "must be one line, without control characters"
_NO_NUL_RE = re.compile(r"[^\x00]*")  # a C string, as exec takes arguments and environment
NO_NUL = "must not contain a NUL character (\\u0000)"
_METHOD_RE = re.compile(r"[A-Za-z]+")
_RESTIC_DURATION_RE = re.compile(r"(?:[0-9]+y)?(?:[0-9]+m)?(?:[0-9]+d)?(?:[0-9]+h)?")
# restic reads each number as a Go int, 32 bits on some machines: 9 digits always fit.
_RESTIC_NUMBER_RE = re.compile(r"[0-9]{10,}")
# Where systemd puts the credentials of henbackup.service; stands in for them outside it.
CREDENTIALS_PLACEHOLDER = "/run/credentials/henbackup.service"
CREDENTIALS_LATER = (
    "CREDENTIALS_DIRECTORY is not set here: the credential is checked when the service"
    " starts (LoadCredential= or LoadCredentialEncrypted= in its unit)"
)


def expect(value: Any, kind: type, what: str) -> None:
    """Raise Invalid unless value is of `kind` (booleans are never integers)."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise Invalid(f"must be {what}, not {type_name(value)}")


def from_parser(parse: Callable[[Any], T]) -> Callable[[Any, At], T]:
    """A converter from a units-style parser: its reason follows the shown value."""

    def convert(value: Any, at: At) -> T:
        try:
            return parse(value)
        except ValueError as error:
            raise Invalid(f"{show(value)} is {error}") from None

    return convert


def table(value: Any, at: At, allowed: tuple[str, ...]) -> dict[str, Any]:
    """value as a table, after reporting each key not in `allowed`."""
    expect(value, dict, "a table")
    for name in value:
        if name not in allowed:
            unknown_key(at.key(name), name, allowed)
    return value


def text(value: Any, at: At) -> str:
    """A non-empty string; never quoted, so it suits secrets."""
    expect(value, str, "a string")
    if not value:
        raise Invalid("must not be empty")
    if "\x00" in value:  # no file, program or library takes it: it would end a C string
        raise Invalid(NO_NUL)
    return str(value)


def one_line(value: Any, at: At) -> str:
    """A non-empty string without control characters (a snapshot's host, a location)."""
    line = text(value, at)
    if _CONTROL_RE.search(line):
        raise Invalid(ONE_LINE)
    return line


# What borg reads in an archive name (BACKUP@HOST@TIME) and its globs: a host with one would
# have retention prune other hosts' archives. No real host name holds them.
HOST_SPECIALS = "@*?[]"
_HOST_SPECIALS_RE = re.compile(f"[{re.escape(HOST_SPECIALS)}]")


def hostname(value: Any, at: At) -> str:
    """A snapshot's host: one line, without any character of HOST_SPECIALS."""
    host = one_line(value, at)
    if _HOST_SPECIALS_RE.search(host):
        raise Invalid(
            "must not contain @, *, ?, [ or ] (borg archive names and patterns hold the"
            " host): write the host's name alone"
        )
    return host


def exclude_pattern(value: Any, at: At) -> str:
    """A restic --exclude pattern restic would take (the watcher reads it as restic does)."""
    pattern = one_line(value, at)
    problem = pattern_problem(pattern)
    if problem is not None:
        raise Invalid(problem)
    return pattern


def absolute_path(value: Any, at: At) -> str:
    expect(value, str, "a string")
    if not value.startswith("/"):
        raise Invalid(f"{show(value)} is not an absolute path: write it from the root, /...")
    if "\x00" in value:
        raise Invalid(NO_NUL)
    return str(value)


def one_line_path(value: Any, at: At) -> str:
    """An absolute path without control characters (a path to back up)."""
    path = absolute_path(value, at)
    if _CONTROL_RE.search(path):
        raise Invalid(ONE_LINE)
    return path


def integer(low: int | None = None, high: int | None = None) -> Callable[[Any, At], int]:
    def convert(value: Any, at: At) -> int:
        expect(value, int, "an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise Invalid(f"{value} is out of range: use a number {bounds}")
        return int(value)

    return convert


def choice(options: tuple[str, ...]) -> Callable[[Any, At], str]:
    def convert(value: Any, at: At) -> str:
        expect(value, str, "a string")
        if value not in options:
            raise Invalid(f"{show(value)} is not one of {', '.join(options)}")
        return str(value)

    return convert


def array(item: Callable[[Any, At], T], required: str = "") -> Callable[[Any, At], tuple[T, ...]]:
    """An array whose items each convert with `item`; `required` is the hint when empty."""

    def convert(value: Any, at: At) -> tuple[T, ...]:
        expect(value, list, "an array")
        if required and not value:
            raise Invalid(f"must not be empty: {required}")
        converted = (at.index(i).attempt(element, item) for i, element in enumerate(value))
        return tuple(element for element in converted if element is not None)

    return convert


def string_table(
    name_re: re.Pattern[str], what: str, value_re: re.Pattern[str] = _ANY_RE, value_what: str = ""
) -> Callable[[Any, At], tuple[tuple[str, str], ...]]:
    """A table of names to strings (env, headers), each value matching `value_re`, else
    `value_what` is the problem: values are never quoted."""

    def convert(value: Any, at: At) -> tuple[tuple[str, str], ...]:
        expect(value, dict, "a table")
        pairs = []
        for name, text in value.items():
            if not name_re.fullmatch(name):
                at.key(name).problem(f"is not a valid {what}")
            elif not isinstance(text, str):
                at.key(name).problem(f"must be a string, not {type_name(text)}")
            elif not value_re.fullmatch(text):
                at.key(name).problem(value_what)
            else:
                pairs.append((name, text))  # an Expanded stays one: secrets.py
        return tuple(pairs)

    return convert


env_table = string_table(
    _ENV_NAME_RE, "environment variable name (letters, digits, _)", _NO_NUL_RE, NO_NUL
)
header_table = string_table(
    _HEADER_NAME_RE,
    "HTTP header name",
    _HEADER_VALUE_RE,
    "must be one line of Latin-1 text, without control characters",
)
_duration = from_parser(units.parse_duration)
LONGEST_WAIT = 24 * 86400  # what one wait of poll/epoll can last (2**31 ms), rounded down


def duration(value: Any, at: At) -> float:
    """A duration henbackup waits for (a timeout, a quiet period): at most LONGEST_WAIT."""
    seconds = _duration(value, at)
    if seconds > LONGEST_WAIT:
        raise Invalid(f"{show(value)} is too long: use at most 24d")
    return seconds


rate = from_parser(units.parse_rate)
size = from_parser(units.parse_size)
priority = from_parser(units.parse_priority)
percent = from_parser(units.parse_percent)
listen = from_parser(units.parse_listen)


def positive_duration(value: Any, at: At) -> float:
    seconds = duration(value, at)
    if seconds <= 0:
        raise Invalid(f"{show(value)} is too short: use a duration above 0")
    return seconds


# An interval counts from the last success: "1ms" backed up without a pause. A minute is
# what a five-field cron expression can do; changes as they come are what watch is for.
SHORTEST_INTERVAL = 60.0
SHORTEST_INTERVAL_HINT = "use an interval of at least 1m (for each change, use watch)"


def schedule_entry(value: Any, at: At) -> ScheduleEntry:
    """A cron expression (has a space, or is an @macro) or an interval."""
    expect(value, str, "a string")
    if any(c.isspace() for c in value.strip()) or value.startswith("@"):
        try:
            cron.parse_cron(value)
        except ValueError as error:
            # The error may quote the expression: not when it came from the environment.
            hint = ' (an interval has no spaces: "1h30m")' if len(value.split()) < 5 else ""
            reason = "" if isinstance(value, Expanded) else f": {error}{hint}"
            raise Invalid(f"{show(value)} is not a cron expression{reason}") from None
        return Cron(str(value).strip())
    seconds = _duration(value, at)  # an interval is kept by a timerfd: up to LONGEST_DURATION
    if seconds < SHORTEST_INTERVAL:
        raise Invalid(f"{show(value)} is too short: {SHORTEST_INTERVAL_HINT}")
    return Interval(seconds, str(value))


schedule = array(schedule_entry)


def credential(value: Any, at: At) -> str:
    """The file of a systemd credential: $CREDENTIALS_DIRECTORY/<name>."""
    name = text(value, at)
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


def credential_table(value: Any, at: At) -> tuple[tuple[str, str], ...]:
    """Environment variable names to the files of the systemd credentials they name."""
    files = ((name, at.key(name).attempt(text, credential)) for name, text in env_table(value, at))
    return tuple((name, file) for name, file in files if file is not None)


def subset(value: Any, at: At) -> str:
    """restic's --read-data-subset: "5%", "1/10" or a size such as "500M"."""
    expect(value, str, "a string")
    return from_parser(units.parse_subset)(value, at)


def restic_duration(value: Any, at: At) -> str:
    expect(value, str, "a string")
    if not value or not _RESTIC_DURATION_RE.fullmatch(value):
        raise Invalid(
            f"{show(value)} is not a restic duration: "
            'use years, months, days, hours, largest first, e.g. "1y2m3d4h"'
        )
    if _RESTIC_NUMBER_RE.search(value):
        raise Invalid(f"{show(value)} is too long: use numbers of at most 9 digits")
    return str(value)


def url(value: Any, at: At) -> str:
    expect(value, str, "a string")
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        raise Invalid("its port must be a number from 0 to 65535") from None
    return str(value)


def method(value: Any, at: At) -> str:
    expect(value, str, "a string")
    if not _METHOD_RE.fullmatch(value):
        raise Invalid(f"{show(value)} is not an HTTP method such as POST or GET")
    return str(value).upper()


def body(value: Any, at: At) -> str:
    expect(value, str, "a string")
    return str(value)


def argv(value: Any, at: At) -> tuple[str, ...]:
    """A command as an argument list (no shell); arguments are never quoted."""
    expect(value, list, 'an array of strings, e.g. ["/usr/bin/pg_dump", "-f", "/backup/db.sql"]')
    if not value:
        raise Invalid(
            'must not be empty: give the program and its arguments, e.g. ["/usr/bin/true"]'
        )
    for position, argument in enumerate(value):
        if not isinstance(argument, str):
            at.index(position).problem(f"must be a string, not {type_name(argument)}")
        elif "\x00" in argument:
            at.index(position).problem(NO_NUL)
    if isinstance(value[0], str) and not value[0]:
        at.index(0).problem("must not be empty: give the program to run")
    return tuple(str(argument) for argument in value)
