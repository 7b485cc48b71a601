"""`python -m bench [NAME...]`: run every benchmark module (or the named ones), one table each."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench

NOT_BENCHMARKS = {"__main__", "table"}


def benchmark_names() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name not in NOT_BENCHMARKS
    )


def main(argv: list[str]) -> int:
    names = argv or benchmark_names()
    unknown = sorted(set(names) - set(benchmark_names()))
    if unknown:
        print(f"unknown benchmark: {', '.join(unknown)}; have: {', '.join(benchmark_names())}")
        return 2
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(module.run().render(), end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
