"""A helper beside the tool: its stderr lines handed on whole, its end and exit code, and
its death when its caller is done with it (engine/sidecar.py)."""

from __future__ import annotations

import os
import sys
import time

from henbackup.engine.sidecar import MAX_LINE_BYTES, Sidecar

CHATTY = "import sys\nfor i in range(20000): print(f'line {i}', file=sys.stderr)\n"
CHATTY += "sys.stderr.write('last, no newline'); sys.exit(3)"


def test_its_lines_come_whole_then_its_exit_code() -> None:
    lines: list[str] = []
    ends: list[int] = []
    sidecar = Sidecar((sys.executable, "-c", CHATTY), os.environ, lines.append, ends.append)
    sidecar.wait(60)
    assert sidecar.ended and ends == [3]
    assert lines == [f"line {i}" for i in range(20000)] + ["last, no newline"]
    sidecar.stop()  # already ended: nothing to do


def test_stopping_it_kills_it_without_an_end() -> None:
    ends: list[int] = []
    argv = (sys.executable, "-c", "import time; time.sleep(600)")
    sidecar = Sidecar(argv, os.environ, lambda _: None, ends.append)
    sidecar.wait(0.2)
    assert not sidecar.ended
    sidecar.stop()
    assert sidecar.ended and ends == []  # its work is not whole
    assert sidecar.process.returncode is not None  # reaped


def test_a_line_that_never_ends_stops_it_as_if_it_had_failed() -> None:
    """Its line is dropped, not held in memory for ever; the tool's run goes on without it."""
    lines: list[str] = []
    ends: list[int] = []
    script = f"import sys, time\nsys.stderr.write('x' * {MAX_LINE_BYTES + 1})\ntime.sleep(60)"
    sidecar = Sidecar((sys.executable, "-c", script), os.environ, lines.append, ends.append)
    started = time.monotonic()
    sidecar.wait(30)
    assert sidecar.ended and time.monotonic() - started < 30
    assert lines == [] and ends == []
    assert sidecar.process.returncode is not None  # killed and reaped
