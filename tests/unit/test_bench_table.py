"""The bench's goal convention, summary and ratios: pure logic, no timing asserted."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench.table import Goal, Table, number, summary
from bench.whole_job import CASES, Ratios, Tool, rows_for


def test_goal_text_of_older_modules_is_read_and_a_verdict_after_it_dropped() -> None:
    assert Goal.parse("<= 1.5") == Goal(1.5)
    assert Goal.parse("<= 10 ms met") == Goal(10, "<=", "ms")
    assert Goal.parse("== 1") == Goal(1, "==")
    assert Goal.parse("\u2264 2 MiB") == Goal(2, "<=", "MiB")
    assert Goal.parse("") is None
    assert Goal.parse("fast") is None
    assert str(Goal(1.10, unit="x")) == "<= 1.1x"
    assert str(Goal(3, unit="MiB")) == "<= 3 MiB"
    assert str(Goal(2, "~", "MiB/s", within=0.05)) == "2 MiB/s \u00b1 5%"


def test_a_goal_within_a_tolerance_is_met_on_both_sides_and_missed_outside() -> None:
    goal = Goal(5, "~", within=0.15)
    assert [goal.met(v) for v in (4.3, 5.7, 4.2, 5.8)] == [True, True, False, False]


def test_an_unknown_comparison_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown comparison '=<'"):
        Goal(1, "=<")


def test_a_cell_shows_its_number_with_or_without_a_unit() -> None:
    assert [number(v) for v in (3, 1.5, "1.23x", "42 ms", "100,000", "-", "", True)] == [
        3.0,
        1.5,
        1.23,
        42.0,
        100000.0,
        None,
        None,
        None,
    ]


def table() -> Table:
    return Table(
        "t",
        ("case", "n", "median", "ratio", "goal"),
        (
            ("fast enough", 9, 0.9, "1.10x", Goal(1.0, unit="s")),
            ("too slow", 1, 1.2, "0.50x", "<= 1 s"),
            ("ratio kept", 1, 5.0, "1.90x", Goal(2, unit="x", column="ratio")),
            ("no goal", 1, 7.0, "", ""),
            ("no number", 1, "failed", "", Goal(1.0)),
        ),
        value_column="median",
    )


def test_the_table_shows_whether_each_goal_is_met_from_its_value_column() -> None:
    lines = table().render().splitlines()
    assert lines[1].split() == ["case", "n", "median", "ratio", "goal", "met"]
    verdicts = [line.split()[-1] if "<=" in line else "" for line in lines[3:]]
    assert verdicts == ["met", "MISSED", "met", "", "?"]


def test_summary_lists_every_goal_and_every_module_that_did_not_run() -> None:
    checks = table().checks("mod")
    assert [(c.what, c.value, str(c.goal), c.met) for c in checks] == [
        ("fast enough", "0.900", "<= 1 s", "met"),
        ("too slow", "1.200", "<= 1 s", "MISSED"),
        ("ratio kept", "1.90x", "<= 2x", "met"),
        ("no number", "failed", "<= 1", "?"),
    ]
    total = summary(checks, [("broken", "RuntimeError: boom")])
    assert total.rows[-1] == ("broken", "did not run: RuntimeError: boom", "", "", "ERROR")
    assert total.notes == ("2 of 4 goals met; 1 bench module(s) did not run.",)


def test_a_table_without_goals_renders_as_before() -> None:
    plain = Table("plain", ("what", "seconds"), (("a", 1.5), ("bb", 10.25)))
    assert plain.render() == "plain\nwhat  seconds\n----  -------\na       1.500\nbb     10.250"
    assert plain.checks() == []


def test_a_value_column_that_is_no_header_is_a_clear_error() -> None:
    wrong = Table("w", ("a", "goal"), (("x", Goal(1)),), value_column="median")
    with pytest.raises(ValueError, match="w: no column 'median'"):
        wrong.checks()


def test_ratios_are_taken_within_each_round_not_across_rounds() -> None:
    # round 2 ran on a busy machine: both slow; the ratio of that round is still 2
    ratios = Ratios.of([2.0, 4.0, 2.2], [1.0, 2.0, 2.0])
    assert ratios.median == 2.0
    assert ratios.minimum == pytest.approx(1.1)
    assert ratios.extra == 1.0
    assert ratios.seconds == 2.2


def test_ratios_use_only_the_rounds_both_completed() -> None:
    assert Ratios.of([3.0], [1.0, 1.0]).median == 3.0


def test_bench_prints_a_summary_and_fails_when_a_module_did_not_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = types.ModuleType("bench.fake_good")
    good.run = table  # type: ignore[attr-defined]
    broken = types.ModuleType("bench.fake_broken")

    def boom() -> Table:
        raise RuntimeError("no restic here")

    broken.run = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.fake_good", good)
    monkeypatch.setitem(sys.modules, "bench.fake_broken", broken)
    monkeypatch.setattr(bench_main, "benchmark_names", lambda: ["fake_broken", "fake_good"])
    assert bench_main.main([]) == 1
    out = capsys.readouterr().out
    assert "summary: every row with a goal" in out
    assert "fake_broken  did not run: RuntimeError: no restic here" in out
    assert "fake_good    too slow" in out
    assert "2 of 4 goals met; 1 bench module(s) did not run." in out


def test_whole_job_rows_carry_issue_18s_goals_and_a_failed_tool_is_shown_failed() -> None:
    tools = [
        Tool(name, Path("/nonexistent"), Path("/nonexistent"))
        for name in ("bare restic", "henbackup daemon", "henbackup one-shot")
    ]
    times = {
        (name, case): [1.0, 2.0] for name in ("bare restic", "henbackup daemon") for case in CASES
    }
    times["henbackup daemon", "unchanged incremental"] = [1.05, 2.6]
    rows = rows_for("restic 9", tools, times, {"henbackup one-shot": "henbackup exited 1: boom"})
    by_name = {row[0]: row for row in rows}
    daemon = by_name["henbackup daemon: unchanged incremental (restic 9)"]
    assert daemon[1:3] == ("1.18x", "1.05x")
    assert str(daemon[5]) == "<= 1.1x"
    assert by_name["henbackup one-shot: first backup (restic 9)"][1] == "failed"
    assert "  (restic 9) henbackup exited 1: boom" in by_name
    table = Table(
        "t",
        ("job", "median ratio", "min ratio", "median s", "median +s", "goal"),
        tuple(rows),
        value_column="median ratio",
    )
    verdicts = {c.what: c.met for c in table.checks()}
    assert verdicts["henbackup daemon: unchanged incremental (restic 9)"] == "MISSED"
    assert verdicts["henbackup daemon: first backup (restic 9)"] == "met"
    assert verdicts["henbackup one-shot: first backup (restic 9)"] == "?"
