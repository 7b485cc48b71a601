"""A tool's output read line by line (engine/run.py's ToolRun), against a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from henbackup.engine.run import (
    MAX_LINE_BYTES,
    MAX_READ,
    STDERR_HEAD,
    STDERR_TAIL,
    ToolRun,
    read_back,
)
from henbackup.errors import EngineError


def test_a_line_that_never_ends_is_refused_not_held_for_ever() -> None:
    script = f"import sys, time\nsys.stdout.write('x' * {MAX_LINE_BYTES + 1})\ntime.sleep(60)"
    with (
        subprocess.Popen((sys.executable, "-c", script), stdout=subprocess.PIPE) as process,
        tempfile.TemporaryFile() as other,
    ):
        assert process.stdout is not None
        run = ToolRun(process, process.stdout, other, tool="restic")
        try:
            deadline = time.monotonic() + 30
            with pytest.raises(EngineError) as error:
                while not run.exited and time.monotonic() < deadline:
                    run.read(0.5)
        finally:
            run.close()
            process.kill()
    assert str(error.value) == "restic printed a line over 16 MiB long"


def test_one_read_takes_at_most_max_read_of_a_stream_that_never_runs_dry() -> None:
    """A child of the tool that writes on forever once held the job in one read: what was
    there was read until the pipe was empty. /dev/zero never is."""
    run = SimpleNamespace(stdout=os.open("/dev/zero", os.O_RDONLY), reading=True, output=0)
    try:
        taken = ToolRun._available(run)  # type: ignore[arg-type]
    finally:
        os.close(run.stdout)
    assert MAX_READ <= len(taken) < MAX_READ + 65536 and run.output == len(taken)


def filler(size: int) -> bytes:
    """`size` bytes of lines that say nothing."""
    lines = (b"x" * 99 + b"\n") * (size // 100)
    return lines + (b"y" * (size % 100 - 1) + b"\n" if size % 100 else b"")


@pytest.mark.parametrize("where", ["head", "tail"])
def test_a_huge_output_is_cut_between_lines_never_inside_a_secret(
    tmp_path: Path, where: str
) -> None:
    """What is kept of it is redacted afterwards: a part of a secret would not be known."""
    line = b"Fatal: cannot reach s3://user:p4ssw0rd@example.com/bucket\n"
    if where == "head":  # the head ends 20 bytes into the line
        output = filler(STDERR_HEAD - 20) + line + filler(STDERR_TAIL + 1000)
    else:  # the tail starts 20 bytes before the line's end
        output = filler(STDERR_HEAD + 1000) + line + filler(STDERR_TAIL - 20)
    (tmp_path / "stderr").write_bytes(output)
    with (tmp_path / "stderr").open("rb") as file:
        text = read_back(file)
    assert "p4ss" not in text and "example" not in text and "Fatal" not in text
    assert all(set(kept) <= {"x", "y"} for kept in text.splitlines())  # whole filler lines
