"""A tiny aligned-table printer shared by every benchmark, and the rows' goals.

The convention every bench module follows, so that `python -m bench` can sum them up:
- `run()` returns a `Table` (or a sequence of them); a row's first cell names what it measures.
- A row with a goal has it in the column headed "goal": a `Goal` (or its text, "<= 1.5 s").
- The measured value compared with it is in the column `Table.value_column` names (by
  default the second one, right after the row's name), or in the one the goal itself names
  (`Goal(2, unit="x", column="ratio")`), in the goal's unit: a number, or text that starts
  with one ("1.23x", "42 ms").
- The table then shows a "met" column by itself ("met", "MISSED"), and the summary at the
  end lists every row that has a goal, from every module.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}
GOAL_TEXT = re.compile(r"\s*(<=|>=|==|<|>)\s*([-+]?\d+(?:\.\d+)?)\s*(.*?)\s*$")
LEADING_NUMBER = re.compile(r"\s*[\u00d7x]?\s*([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def cell(value: object) -> str:
    """Floats with 3 decimals, everything else as str."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("sx%"))
    except ValueError:
        return False
    return True


def number(value: object) -> float | None:
    """The number a cell shows (3, 1.5, "1.23x", "42 ms"), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    found = LEADING_NUMBER.match(str(value).replace(",", ""))
    return float(found.group(1)) if found else None


@dataclass(frozen=True)
class Goal:
    """What a row must hold: `value <op> limit`, or with op "~" `value` within `within`
    (a fraction) of `limit`; in `unit` (shown, never converted). The value is in the
    table's value column unless `column` names another header."""

    limit: float
    op: str = "<="
    unit: str = ""
    column: str | None = None
    within: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in (*COMPARISONS, "~"):
            known = ", ".join((*COMPARISONS, "~"))
            raise ValueError(f"goal: unknown comparison {self.op!r}; use one of {known}")

    @classmethod
    def parse(cls, text: str) -> Goal | None:
        """A goal's text as a Goal: "<= 1.5", "<= 3 MiB", "== 1" (also with \u2264 and \u2265);
        None for "" or text of another shape. A verdict an older module wrote after it
        ("<= 10 ms met") is dropped."""
        found = GOAL_TEXT.match(text.replace("\u2264", "<=").replace("\u2265", ">="))
        if not found:
            return None
        op, limit, unit = found.groups()
        unit = re.sub(r"\s*\b(met|MISSED)$", "", unit)
        return cls(float(limit), op, unit)

    def met(self, value: float) -> bool:
        if self.op == "~":
            return abs(value / self.limit - 1) <= self.within
        return COMPARISONS[self.op](value, self.limit)

    def __str__(self) -> str:
        space = "" if self.unit in ("", "x", "%") else " "
        if self.op == "~":
            return f"{self.limit:g}{space}{self.unit} \u00b1 {self.within:.0%}"
        return f"{self.op} {self.limit:g}{space}{self.unit}"


def goal_of(value: object) -> Goal | None:
    """A goal cell as a Goal (a Goal, its text, or nothing)."""
    if isinstance(value, Goal):
        return value
    return Goal.parse(value) if isinstance(value, str) else None


def verdict(goal: Goal | None, value: object) -> str:
    """ "met", "MISSED", "?" (a goal but no number to compare) or "" (no goal)."""
    if goal is None:
        return ""
    measured = number(value)
    if measured is None:
        return "?"
    return "met" if goal.met(measured) else "MISSED"


@dataclass(frozen=True)
class Check:
    """One row that has a goal: what it measures, the value shown, the goal, the verdict."""

    bench: str
    what: str
    value: str
    goal: Goal
    met: str


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    notes: tuple[str, ...] = ()
    value_column: str | None = None  # the header of the value a "goal" is compared with

    def _goal_index(self) -> int | None:
        return self.headers.index("goal") if "goal" in self.headers else None

    def _value(self, row: tuple[object, ...], goal: Goal | None) -> object:
        """The cell a row's goal is compared with ("" if the row is too short)."""
        column = (goal.column if goal else None) or self.value_column
        if column is not None and column not in self.headers:
            raise ValueError(f"{self.title}: no column {column!r} to compare a goal with")
        index = 1 if column is None else self.headers.index(column)
        return row[index] if index < len(row) else ""

    def checks(self, bench: str = "") -> list[Check]:
        """Every row that has a goal, with its verdict."""
        index = self._goal_index()
        if index is None:
            return []
        found = []
        for row in self.rows:
            goal = goal_of(row[index]) if index < len(row) else None
            if goal is None:
                continue
            value = self._value(row, goal)
            found.append(Check(bench, str(row[0]), cell(value), goal, verdict(goal, value)))
        return found

    def _shown(self) -> tuple[tuple[str, ...], list[list[str]]]:
        """Headers and cells, with a "met" column after "goal" when the table has goals."""
        headers = list(self.headers)
        body = [[cell(value) for value in row] for row in self.rows]
        index = self._goal_index()
        if index is None or "met" in self.headers:
            return tuple(headers), body
        headers.append("met")
        for row, shown in zip(self.rows, body, strict=True):
            shown += [""] * (len(headers) - 1 - len(shown))  # short rows: blank cells
            goal = goal_of(row[index]) if index < len(row) else None
            if goal is not None:
                shown[index] = str(goal)
            shown.append(verdict(goal, self._value(row, goal)))
        return tuple(headers), body

    def render(self) -> str:
        """The title, a header line, a rule, the rows (numbers right-aligned), the notes."""
        headers, body = self._shown()
        for row in body:  # short rows get blank cells
            row += [""] * (len(headers) - len(row))
        widths = [
            max([len(header)] + [len(row[i]) for row in body]) for i, header in enumerate(headers)
        ]
        right = [
            bool(body) and all(_numeric(row[i]) for row in body if row[i])
            for i in range(len(widths))
        ]

        def line(cells: Sequence[str]) -> str:
            parts = (
                c.rjust(w) if r else c.ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            )
            return "  ".join(parts).rstrip()

        out = [self.title, line(headers), "  ".join("-" * w for w in widths)]
        out += [line(row) for row in body]
        out += list(self.notes)
        return "\n".join(out)


def summary(checks: Sequence[Check], failures: Sequence[tuple[str, str]] = ()) -> Table:
    """One table of every goal of every bench module, and of the modules that did not run."""
    rows: list[tuple[object, ...]] = [
        (c.bench, c.what, c.value, str(c.goal), c.met) for c in checks
    ]
    rows += [(bench, f"did not run: {error}", "", "", "ERROR") for bench, error in failures]
    met = sum(c.met == "met" for c in checks)
    return Table(
        "summary: every row with a goal",
        ("bench", "row", "value", "goal", "met"),
        tuple(rows),
        (f"{met} of {len(checks)} goals met; {len(failures)} bench module(s) did not run.",),
    )
