"""Where a configuration problem is, and how a message may show a value.

Shared by load.py (reading and merging files) and validate.py (checking the merged
document): `At` is a key path in one file that records problems; converters raise
`Invalid` for the value at their own path. Messages never quote an `Expanded` string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from henbackup.errors import Problem

T = TypeVar("T")

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class Expanded(str):
    """A string that took text from the environment: a message never shows it.

    `values` are the texts the environment gave it (hooks treat them as secrets).
    """

    values: tuple[str, ...] = ()


def expanded(text: str, values: list[str]) -> Expanded:
    result = Expanded(text)
    result.values = tuple(values)
    return result


def environment_values(value: object) -> list[str]:
    """Every text that came from the environment into `value` (strings, lists, tables)."""
    if isinstance(value, Expanded):
        return list(value.values)
    if isinstance(value, list):
        return [text for element in value for text in environment_values(element)]
    if isinstance(value, dict):
        return [text for element in value.values() for text in environment_values(element)]
    return []


class Invalid(Exception):
    """A problem with the value being converted, at the converter's own key path."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Run:
    """What one load_config call accumulates."""

    env: Mapping[str, str]
    problems: list[Problem] = field(default_factory=list)
    expansion: list[Problem] = field(default_factory=list)  # failed ${}, reported first
    broken: set[tuple[str, str]] = field(default_factory=set)  # (file, key) of failed ${}
    # What only the service can check (its credentials), when not run by it; None: the
    # service itself, where these are problems.
    deferred: list[Problem] | None = None


@dataclass(frozen=True)
class At:
    """A key path in one file: where converters report problems."""

    run: Run
    file: str
    path: str = ""

    def key(self, name: str) -> At:
        part = name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name, ensure_ascii=False)
        return At(self.run, self.file, f"{self.path}.{part}" if self.path else part)

    def index(self, position: int) -> At:
        return At(self.run, self.file, f"{self.path}[{position}]")

    def problem(self, message: str) -> None:
        self.run.problems.append(Problem(self.file, self.path, message))

    def attempt(self, value: Any, convert: Callable[[Any, At], T]) -> T | None:
        """convert(value), or None after recording its problem."""
        try:
            return convert(value, self)
        except Invalid as invalid:
            self.problem(invalid.message)
            return None

    def get(self, table: Mapping[str, Any], name: str, convert: Callable[[Any, At], T]) -> T | None:
        """The converted value of an optional key, None when absent or invalid."""
        return self.key(name).attempt(table[name], convert) if name in table else None

    def require(
        self, table: Mapping[str, Any], name: str, convert: Callable[[Any, At], T]
    ) -> T | None:
        """Like get, but a missing key is a problem."""
        if name not in table:
            self.key(name).problem("is required: add it")
            return None
        return self.get(table, name, convert)


_TYPE_NAMES = (
    (bool, "a boolean"),  # before int: to isinstance, a boolean is an int
    (int, "an integer"),
    (float, "a float"),
    (list, "an array"),
    (dict, "a table"),
    (str, "a string"),
)


def type_name(value: object) -> str:
    """What a TOML value is, for "must be X, not Y"."""
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return "a date or time"


def show(value: object) -> str:
    """The value as a message may quote it; text from the environment is never shown."""
    if isinstance(value, Expanded):
        return "the value (from the environment)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    return type_name(value)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    import difflib  # only a config with a mistake needs it: not every start

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def unknown_key(at: At, name: str, allowed: tuple[str, ...]) -> None:
    hint = did_you_mean(name, allowed) or f": remove it, or use one of: {', '.join(allowed)}"
    at.problem(f"unknown key{hint}")
