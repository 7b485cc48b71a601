"""`python -m bench [NAME...]`: run every benchmark module (or the named ones), one table each,
then a summary of every row that has a goal (see bench/table.py for the convention).

Exit 0 once every module ran, goals met or not (the tables say which); 1 if a module failed.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

import bench
from bench.table import Check, Table, summary

NOT_BENCHMARKS = {"__main__", "table"}


def benchmark_names() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name not in NOT_BENCHMARKS and not info.name.startswith("_")
    )


def tables_of(result: Table | list[Table] | tuple[Table, ...]) -> list[Table]:
    """A module's run() gives one table or several."""
    return [result] if isinstance(result, Table) else list(result)


def main(argv: list[str]) -> int:
    names = argv or benchmark_names()
    unknown = sorted(set(names) - set(benchmark_names()))
    if unknown:
        print(f"unknown benchmark: {', '.join(unknown)}; have: {', '.join(benchmark_names())}")
        return 2
    checks: list[Check] = []
    failures: list[tuple[str, str]] = []
    for name in names:
        try:
            tables = tables_of(importlib.import_module(f"bench.{name}").run())
        except Exception as error:  # one module's failure must not hide the others' results
            traceback.print_exc()
            failures.append((name, f"{type(error).__name__}: {error}".splitlines()[0]))
            continue
        for table in tables:
            print(table.render(), end="\n\n", flush=True)
            checks += table.checks(name)
    print(summary(checks, failures).render(), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
