"""Parsing restic's stdout: progress, summaries, snapshots, forget, stats.
Every restic output below was captured from real runs of restic 0.14.0 (Debian 12) and
0.18.0 (Debian 13) on this project's machine; only the comments were added.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from henbackup.engine.base import TransferProgress
from henbackup.engine.restic import (
    count_files,
    last_json,
    parse_backup_summary,
    parse_forget,
    parse_json_line,
    parse_progress,
    parse_snapshots,
    parse_stats,
    parse_time,
    restored_roots,
    status_counters,
)
from henbackup.errors import (
    EngineError,
)

# --- stdout parsing ----------------------------------------------------------------------

# restic 0.14, backup --json
STATUS_014 = (
    '{"message_type":"status","seconds_elapsed":1,"percent_done":0.82,"total_files":2003,'
    '"files_done":2002,"total_bytes":209845115,"bytes_done":173011337,'
    '"current_files":["/srv/data/big-1","/srv/data/big-2"]}'
)
STATUS_014_START = '{"message_type":"status","percent_done":0,"total_files":1,"total_bytes":100000}'
STATUS_014_SCANNING = '{"message_type":"status","percent_done":0,"files_done":1}'
STATUS_014_ERRORS = (
    '{"message_type":"status","percent_done":1,"total_files":3,"files_done":2,'
    '"total_bytes":100003,"bytes_done":100003,"error_count":1,"current_files":["/data/sub/b"]}'
)
SUMMARY_014 = (
    '{"message_type":"summary","files_new":2,"files_changed":0,"files_unmodified":0,'
    '"dirs_new":2,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":2,"tree_blobs":3,'
    '"data_added":101401,"total_files_processed":2,"total_bytes_processed":100003,'
    '"total_duration":0.209604886,"snapshot_id":"d392dc9e"}'
)
# restic 0.18, backup --json
STATUS_018 = (
    '{"message_type":"status","seconds_elapsed":2,"seconds_remaining":13,'
    '"percent_done":0.126953125,"total_files":1,"total_bytes":21474836480,'
    '"bytes_done":2726297600,"current_files":["/tmp/exp/sparse/zero"]}'
)
SUMMARY_018 = (
    '{"message_type":"summary","files_new":2,"files_changed":0,"files_unmodified":0,'
    '"dirs_new":2,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":2,"tree_blobs":3,'
    '"data_added":101401,"data_added_packed":101122,"total_files_processed":2,'
    '"total_bytes_processed":100003,"total_duration":0.69020496,'
    '"backup_start":"2026-11-26T04:04:17.402640645Z",'
    '"backup_end":"2026-11-26T04:04:18.092845595Z",'
    '"snapshot_id":"611ccb0db613c5546e5b20ab4b7816c6786a8481a4bda76641f8d669ebaccca8"}'
)
# restic 0.18, backup --json --skip-if-unchanged with nothing changed: no snapshot_id
SUMMARY_018_SKIPPED = (
    '{"message_type":"summary","files_new":0,"files_changed":0,"files_unmodified":2,'
    '"dirs_new":0,"dirs_changed":0,"dirs_unmodified":2,"data_blobs":0,"tree_blobs":0,'
    '"data_added":0,"data_added_packed":0,"total_files_processed":2,'
    '"total_bytes_processed":100003,"total_duration":-9223372036.854776,'
    '"backup_start":"2026-11-26T04:07:20.361443454Z","backup_end":"0001-01-01T00:00:00Z"}'
)
# restic 0.18, restore --json
RESTORE_STATUS_018 = (
    '{"message_type":"status","percent_done":0.1742174414799964,"total_files":10,'
    '"total_bytes":90100003,"bytes_restored":15696992}'
)
RESTORE_SKIPPED_018 = (
    '{"message_type":"summary","total_files":3,"files_restored":7,"files_skipped":2,'
    '"bytes_skipped":5}'
)


def test_parse_progress_014_status_line() -> None:
    progress = parse_progress(json.loads(STATUS_014))
    assert progress == TransferProgress(
        fraction=0.82,
        files_done=2002,
        total_files=2003,
        bytes_done=173011337,
        total_bytes=209845115,
        seconds_elapsed=1.0,
        seconds_remaining=None,
    )


def test_parse_progress_absent_fields_mean_zero_or_unknown() -> None:
    start = parse_progress(json.loads(STATUS_014_START))
    assert start == TransferProgress(0.0, 0, 1, 0, 100000, 0.0, None)
    scanning = parse_progress(json.loads(STATUS_014_SCANNING))
    assert scanning == TransferProgress(0.0, 1, None, 0, None, 0.0, None)
    done = parse_progress(json.loads(STATUS_014_ERRORS))
    assert done is not None and done.fraction == 1.0 and done.files_done == 2


def test_parse_progress_018_status_line() -> None:
    progress = parse_progress(json.loads(STATUS_018))
    assert progress == TransferProgress(
        fraction=0.126953125,
        files_done=0,
        total_files=1,
        bytes_done=2726297600,
        total_bytes=21474836480,
        seconds_elapsed=2.0,
        seconds_remaining=13.0,
    )


def test_parse_progress_restore_lines() -> None:
    progress = parse_progress(json.loads(RESTORE_STATUS_018))
    assert progress == TransferProgress(0.1742174414799964, 0, 10, 15696992, 90100003, 0.0, None)
    skipped = {**json.loads(RESTORE_SKIPPED_018), "message_type": "status"}
    assert parse_progress(skipped) == TransferProgress(0.0, 9, 3, 5, None, 0.0, None)


def test_parse_progress_ignores_other_messages() -> None:
    assert parse_progress(json.loads(SUMMARY_014)) is None


@pytest.mark.parametrize(
    "line",
    [
        "using parent snapshot 0f40435a",
        "",
        "[0:00] 100.00%  4 / 4 snapshots",
        '{"message_type": "status", truncated',
        "[1, 2, 3]",
        "\x1b[2Ksignal interrupt received, cleaning up",
    ],
)
def test_non_json_lines_do_not_crash(line: str) -> None:
    assert parse_json_line(line) is None


@pytest.mark.parametrize(
    "fields",
    [
        '"percent_done":"x","files_done":"2","seconds_elapsed":[1],"seconds_remaining":"3"',
        '"percent_done":NaN,"files_done":NaN,"bytes_done":Infinity,"seconds_remaining":NaN',
        '"percent_done":1e400,"files_done":-1e400,"bytes_done":1e400,"seconds_elapsed":1e400',
        '"percent_done":true,"total_files":1e999,"total_bytes":"9","seconds_elapsed":false',
    ],
)
def test_odd_numbers_in_a_status_line_read_as_unknown(fields: str) -> None:
    line = '{"message_type":"status",' + fields + "}"
    message = parse_json_line(line)
    assert message is not None
    assert parse_progress(message) == TransferProgress(0.0, 0, None, 0, None, 0.0, None)
    assert status_counters(line) == (0, 0)


def test_a_status_line_with_a_huge_integer_reads_it_as_unknown() -> None:
    line = '{"message_type":"status","percent_done":' + "9" * 400 + "}"
    assert parse_progress(json.loads(line)) == TransferProgress(0.0, 0, None, 0, None, 0.0, None)


def test_a_line_nested_too_deep_for_json_is_not_json() -> None:
    assert parse_json_line("{" + '"a":[' * 100000) is None
    assert parse_json_line('{"a":' + "[" * 100000 + "]" * 100000 + "}") is None
    with pytest.raises(EngineError, match=r"^restic printed no JSON result$"):
        last_json(["[" * 100000 + "]" * 100000])


def test_parse_backup_summary_014() -> None:
    result = parse_backup_summary(json.loads(SUMMARY_014), 1.5, ["/gone does not exist, skipping"])
    assert result.snapshot_id == "d392dc9e"  # 0.14 reports the short id
    assert (result.files_new, result.files_changed, result.files_unmodified) == (2, 0, 0)
    assert (result.bytes_added, result.bytes_processed) == (101401, 100003)
    assert result.duration == 1.5
    assert result.warnings == ("/gone does not exist, skipping",)


def test_parse_backup_summary_018_and_skipped() -> None:
    result = parse_backup_summary(json.loads(SUMMARY_018), 0.7)
    assert result.snapshot_id == "611ccb0db613c5546e5b20ab4b7816c6786a8481a4bda76641f8d669ebaccca8"
    assert result.bytes_added == 101401
    skipped = parse_backup_summary(json.loads(SUMMARY_018_SKIPPED), 0.7)
    assert skipped.snapshot_id is None
    assert skipped.files_unmodified == 2
    assert skipped.duration == 0.7  # not restic's bogus total_duration


def test_too_many_warnings_are_summarised() -> None:
    result = parse_backup_summary(json.loads(SUMMARY_014), 1, [f"w{i}" for i in range(120)])
    assert len(result.warnings) == 51
    assert result.warnings[-1] == "... and 70 more warnings"


SNAPSHOTS_014 = (
    '[{"time":"2026-11-26T04:04:13.957530108Z","parent":"d392dc9ec04c3bd7c5876881055e79a09e'
    '65460748a97ce10bb0dc4b8736231b","tree":"0fd20f3ff3e48439355449183c8f491d4e838c70d3b873c9'
    '081e9709581d770f","paths":["/tmp/exp/data"],"hostname":"h1","username":"root","tags":['
    '"backup-x"],"id":"09f9a4179c03d13507a7ed31db3df4159b49abd353982325d7d78fbee6986ec6",'
    '"short_id":"09f9a417"},{"time":"2026-11-26T04:04:13.205726818Z","tree":"0fd20f3ff3e484'
    '39355449183c8f491d4e838c70d3b873c9081e9709581d770f","paths":["/tmp/exp/data"],'
    '"hostname":"h1","username":"root","tags":["backup-x"],"id":"d392dc9ec04c3bd7c5876881055'
    'e79a09e65460748a97ce10bb0dc4b8736231b","short_id":"d392dc9e"}]'
)
SNAPSHOTS_018 = (
    '[{"time":"2026-11-26T04:17:44.398740853Z","tree":"0fd20f3ff3e48439355449183c8f491d4e83'
    '8c70d3b873c9081e9709581d770f","paths":["/tmp/exp/data"],"hostname":"h1","username":'
    '"root","tags":["backup-x"],"program_version":"restic 0.18.0","summary":{"backup_start":'
    '"2026-11-26T04:17:44.398740853Z","backup_end":"2026-11-26T04:17:45.078830453Z",'
    '"files_new":2,"files_changed":0,"files_unmodified":0,"dirs_new":2,"dirs_changed":0,'
    '"dirs_unmodified":0,"data_blobs":2,"tree_blobs":3,"data_added":101401,'
    '"data_added_packed":101122,"total_files_processed":2,"total_bytes_processed":100003},'
    '"id":"ed0ca397685901f030c0a4104ca79e5422491e8211c89e4de3d0ce21ad73b01a",'
    '"short_id":"ed0ca397"}]'
)


def test_parse_snapshots_014_sorted_oldest_first() -> None:
    snapshots = parse_snapshots(json.loads(SNAPSHOTS_014))
    assert [s.short_id for s in snapshots] == ["d392dc9e", "09f9a417"]
    first = snapshots[0]
    assert first.id == "d392dc9ec04c3bd7c5876881055e79a09e65460748a97ce10bb0dc4b8736231b"
    assert first.time == datetime(2026, 11, 26, 4, 4, 13, 205726, tzinfo=UTC)
    assert (first.host, first.paths, first.tags) == ("h1", ("/tmp/exp/data",), ("backup-x",))
    assert first.backup == "x"
    assert first.bytes_added is None


def test_parse_snapshots_018_has_bytes_added() -> None:
    (snapshot,) = parse_snapshots(json.loads(SNAPSHOTS_018))
    assert snapshot.bytes_added == 101401
    assert snapshot.short_id == "ed0ca397"


def test_parse_snapshots_without_tags_or_paths() -> None:
    doc = [{"time": "2026-01-02T03:04:05+01:00", "hostname": "h", "id": "ab" * 32}]
    (snapshot,) = parse_snapshots(doc)
    assert (snapshot.tags, snapshot.paths, snapshot.backup, snapshot.short_id) == (
        (),
        (),
        None,
        "abababab",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T04:04:13.205726818Z", datetime(2026, 11, 26, 4, 4, 13, 205726, tzinfo=UTC)),
        (
            "2026-11-26T05:04:13.2057268+01:00",
            datetime(2026, 11, 26, 5, 4, 13, 205726, tzinfo=timezone(timedelta(hours=1))),
        ),
        ("2026-11-26T04:04:13Z", datetime(2026, 11, 26, 4, 4, 13, tzinfo=UTC)),
        (
            "2026-11-25T23:04:13.5-05:00",
            datetime(2026, 11, 25, 23, 4, 13, 500000, tzinfo=timezone(timedelta(hours=-5))),
        ),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()


def test_parse_time_rejects_garbage() -> None:
    with pytest.raises(EngineError):
        parse_time("yesterday")


# restic 0.14, forget --json --group-by host,tags --keep-last 2 (two kept, two removed)
FORGET_014 = (
    '[{"tags":["backup-x"],"host":"h1","paths":null,"keep":[{"time":"2026-11-26T04:04:30.3143'
    '06198Z","paths":["/proc/4015/mem","/tmp/exp/data"],"hostname":"h1","tags":["backup-x"],'
    '"id":"b681613110fb3409d99bf9b44bd120977e18af56c79d04feaca3b30661f6eae4","short_id":'
    '"b6816131"},{"time":"2026-11-26T04:04:22.303193965Z","paths":["/tmp/exp/data"],'
    '"hostname":"h1","tags":["backup-x"],"id":"d8b0fb67988ee6f06c4afbcba6011642186054059bbef8'
    'c76f1dbed11877fd41","short_id":"d8b0fb67"}],"remove":[{"time":"2026-11-26T04:04:13.95753'
    '0108Z","paths":["/tmp/exp/data"],"hostname":"h1","tags":["backup-x"],"id":"09f9a4179c03d'
    '13507a7ed31db3df4159b49abd353982325d7d78fbee6986ec6","short_id":"09f9a417"},{"time":'
    '"2026-11-26T04:04:13.205726818Z","paths":["/tmp/exp/data"],"hostname":"h1","tags":['
    '"backup-x"],"id":"d392dc9ec04c3bd7c5876881055e79a09e65460748a97ce10bb0dc4b8736231b",'
    '"short_id":"d392dc9e"}],"reasons":[]}]'
)
# restic 0.18, forget --json ... --keep-last 5 with one snapshot: "remove" is null
FORGET_018_NOTHING = (
    '[{"tags":["backup-x"],"host":"h1","paths":null,"keep":[{"time":"2026-11-26T04:17:44.398'
    '740853Z","paths":["/tmp/exp/data"],"hostname":"h1","tags":["backup-x"],"id":"ed0ca39768'
    '5901f030c0a4104ca79e5422491e8211c89e4de3d0ce21ad73b01a","short_id":"ed0ca397"}],'
    '"remove":null,"reasons":[]}]'
)


def test_parse_forget() -> None:
    result = parse_forget(json.loads(FORGET_014))
    assert [i[:8] for i in result.kept] == ["b6816131", "d8b0fb67"]
    assert [i[:8] for i in result.removed] == ["09f9a417", "d392dc9e"]
    nothing = parse_forget(json.loads(FORGET_018_NOTHING))
    assert [i[:8] for i in nothing.kept] == ["ed0ca397"] and nothing.removed == ()
    assert parse_forget(None).kept == ()


SNAPSHOT_SHAPE = "restic printed a snapshot list of unexpected shape"
FORGET_SHAPE = "restic printed a forget result of unexpected shape"


@pytest.mark.parametrize(
    ("parse", "doc", "message"),
    [
        (parse_snapshots, [1], SNAPSHOT_SHAPE),
        (parse_snapshots, [{"id": "ab"}], SNAPSHOT_SHAPE),
        (parse_snapshots, [{"time": "2024-01-01T00:00:00Z"}], SNAPSHOT_SHAPE),
        (
            parse_snapshots,
            [{"id": "ab", "time": "2024-01-01T00:00:00Z", "paths": 5}],
            SNAPSHOT_SHAPE,
        ),
        (parse_snapshots, [{"id": "ab", "time": "2024-13-01T00:00:00Z"}], SNAPSHOT_SHAPE),
        (parse_forget, [1], FORGET_SHAPE),
        (parse_forget, [{"keep": [1]}], FORGET_SHAPE),
        (parse_forget, [{"remove": 5}], FORGET_SHAPE),
    ],
)
def test_a_document_of_unexpected_shape_is_an_engine_error(parse, doc, message) -> None:
    with pytest.raises(EngineError) as error:
        parse(doc)
    assert str(error.value) == message


def test_parse_stats_both_versions() -> None:
    v014 = json.loads(
        '{"total_size":101546,"total_file_count":0,"total_blob_count":8,"snapshots_count":4}'
    )
    v018 = json.loads(
        '{"total_size":101546,"total_uncompressed_size":102702,"compression_ratio":'
        '1.0113840033088453,"compression_progress":100,"compression_space_saving":'
        '1.1255866487507538,"total_blob_count":8,"snapshots_count":5}'
    )
    assert parse_stats(v014).total_size == 101546 and parse_stats(v014).snapshots_count == 4
    assert parse_stats(v018).total_file_count == 0 and parse_stats(v018).snapshots_count == 5
    with pytest.raises(EngineError):
        parse_stats([])


def test_last_json_skips_text_lines() -> None:
    lines = ["Applying Policy: keep 1 latest snapshots", '[{"a": 1}]', "done", ""]
    assert last_json(lines) == [{"a": 1}]
    with pytest.raises(EngineError):
        last_json(["no json here"])


def test_restored_roots_and_count(tmp_path: Path) -> None:
    assert restored_roots(["/srv/a", "/srv/b"], ()) == ("/srv/a", "/srv/b")
    assert restored_roots(["/srv/a"], ["/srv/a/x"]) == ("/srv/a/x",)
    assert restored_roots(["/srv/a"], ["/srv/a/*.jpg"]) == ("/srv/a",)
    tree = tmp_path / "srv" / "a"
    (tree / "x").mkdir(parents=True)
    (tree / "x" / "one").write_bytes(b"12345")
    (tree / "two").write_bytes(b"12")
    (tree / "link").symlink_to("two")
    assert count_files(str(tmp_path), ["/srv/a"]) == (2, 7)
    assert count_files(str(tmp_path), ["/srv/a/x", "/srv/a/two", "/srv/missing"]) == (2, 7)


def test_a_restored_root_that_is_a_link_is_never_followed_out_of_the_destination(
    tmp_path: Path,
) -> None:
    """A snapshot's path may be a link (/srv/app/current): restored as a link, it points
    at the live host, whose files are not what was restored (and may be all of /)."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    (elsewhere / "deep" / "file").write_bytes(b"live host data")
    restored = tmp_path / "restore"
    (restored / "srv" / "app").mkdir(parents=True)
    (restored / "srv" / "app" / "current").symlink_to(elsewhere)
    (restored / "srv" / "app" / "kept").write_bytes(b"123")
    assert count_files(str(restored), ["/srv/app/current"]) == (0, 0)
    assert count_files(str(restored), ["/srv/app/current/deep"]) == (0, 0)
    assert count_files(str(restored), ["/srv/app/current/deep/file"]) == (0, 0)
    assert count_files(str(restored), ["/srv/app/../../../elsewhere"]) == (0, 0)
    assert count_files(str(restored), ["/srv/app"]) == (1, 3)


def test_a_link_above_a_root_inside_the_destination_is_followed(tmp_path: Path) -> None:
    """An in-place restore (destination /) on a merged-/usr host: /bin is a link to
    usr/bin, and /bin/ls is what was restored."""
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "ls").write_bytes(b"1234")
    (tmp_path / "bin").symlink_to("usr/bin")
    assert count_files(str(tmp_path), ["/bin/ls"]) == (1, 4)
    assert count_files(str(tmp_path), ["/bin"]) == (0, 0)  # the root itself a link


def test_status_counters_move_with_progress() -> None:
    assert status_counters(STATUS_014) == (2002, 173011337)
    assert status_counters('{"message_type":"summary","files_new":1}') is None
    assert status_counters("Load(<key/1>) returned error") is None
