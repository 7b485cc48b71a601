"""Benchmarks: measure, never assert. `python -m bench [NAME...]` runs them.

A benchmark is a module here with `run() -> Table` (see table.py); it compares against a
baseline measured in the same run and prints the ratio.
"""
