"""bench/engines.py's side-by-side table: pure logic on given times and sizes, no timing."""

from __future__ import annotations

from pathlib import Path

from bench.engines import SizedTool, side_by_side
from bench.whole_job import CASES


def test_restic_and_borg_side_by_side_show_medians_ratios_and_sizes() -> None:
    sizes = {"henbackup on restic": 200_000_000, "henbackup one-shot": 250_000_000}
    tool = SizedTool("bare borg", Path("/nowhere"), Path("/nowhere"), sizes=sizes)
    times = {("henbackup on restic", case): [1.0, 2.0, 3.0] for case in CASES}
    times |= {("henbackup one-shot", case): [3.0, 3.0, 1.0] for case in CASES}
    table = side_by_side("restic 9", "borg 9", [tool], times, {})
    assert table.headers == ("job", "restic 9", "borg 9", "borg / restic")
    assert table.rows == (
        *((case, 2.0, 3.0, "1.50x") for case in CASES),
        ("repository size, MB", "200.0", "250.0", "1.25x"),
    )


def test_a_failed_tool_leaves_its_rows_failed_and_says_why() -> None:
    tool = SizedTool("bare borg", Path("/nowhere"), Path("/nowhere"), sizes={})
    failed = {"henbackup one-shot": "henbackup exited 1: boom"}
    table = side_by_side("restic 9", "borg 9", [tool], {}, failed)
    assert table.rows == tuple((case, "failed", "failed", "") for case in CASES)
    assert "  henbackup exited 1: boom" in table.notes
