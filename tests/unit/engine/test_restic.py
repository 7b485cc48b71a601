"""The restic engine's pure half: command lines, environments, parsers, error mapping.

Every restic output below was captured from real runs of restic 0.14.0 (Debian 12) and
0.18.0 (Debian 13) on this project's machine; only the comments were added.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from henbackup.config.model import PasswordSource, Retention
from henbackup.engine.base import BackupRequest, Target, TransferProgress
from henbackup.engine.restic import (
    CAT_CONFIG_ARGS,
    PROGRESS_FPS,
    STATS_ARGS,
    UNLOCK_ARGS,
    Features,
    backup_args,
    check_args,
    child_env,
    classify_failure,
    count_files,
    explanation,
    fatal_reason,
    forget_args,
    global_flags,
    keep_flags,
    kib_per_second,
    last_json,
    make_command,
    parse_backup_summary,
    parse_forget,
    parse_json_line,
    parse_progress,
    parse_snapshots,
    parse_stats,
    parse_time,
    parse_version,
    password_env,
    restore_args,
    restored_roots,
    retry_cause,
    secrets_of,
    snapshots_args,
    status_counters,
    stderr_messages,
)
from henbackup.errors import (
    BackendUnreachable,
    EngineError,
    RepositoryLocked,
    RepositoryMissing,
    SnapshotNotFound,
    WrongPassword,
)
from henbackup.redact import Redactor

V014 = Features((0, 14, 0))
V018 = Features((0, 18, 0))

SECRET_PASSWORD = "hunter2-$'\"`;|&"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REST_LOCATION = "rest:http://user:s3cr3t@127.0.0.1:1/repo"


def target(**overrides: object) -> Target:
    fields: dict[str, object] = {
        "name": "aws-ireland",
        "location": "s3:s3.eu-west-1.amazonaws.com/bucket/pictures",
        "password": PasswordSource("password", SECRET_PASSWORD),
        "env": (
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ),
    }
    fields.update(overrides)
    return Target(**fields)  # type: ignore[arg-type]


# --- versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("restic 0.14.0 compiled with go1.19.8 on linux/amd64\n", (0, 14, 0)),
        ("restic 0.18.0 compiled with go1.24.4 on linux/amd64\n", (0, 18, 0)),
        ("restic 0.16.0-dev (compiled manually) compiled with go1.20 on linux/arm64", (0, 16, 0)),
        ("something else entirely", (0, 0, 0)),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int]) -> None:
    assert parse_version(text) == version


def test_features_follow_the_version() -> None:
    assert not (V014.retry_lock or V014.skip_if_unchanged or V014.exit_codes)
    assert not V014.restore_progress
    v016 = Features((0, 16, 4))
    assert v016.retry_lock and v016.restore_progress
    assert not (v016.skip_if_unchanged or v016.exit_codes)
    assert V018.retry_lock and V018.skip_if_unchanged and V018.exit_codes


# --- command lines ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "kib"), [(50 * 1024, 50), (1024 * 1024, 1024), (1500, 1), (1023, 1), (1, 1)]
)
def test_limits_are_whole_kib_per_second_at_least_one(limit: int, kib: int) -> None:
    assert kib_per_second(limit) == kib


def test_global_flags_everything() -> None:
    t = target(options=("s3.storage-class=STANDARD_IA", "s3.region=eu-west-1"))
    t = Target(**{**t.__dict__, "upload_limit": 500 * 1024, "download_limit": 200 * 1024 + 1})
    flags = global_flags(t, Path("/var/cache/henbackup"), retry_lock=7.2)
    assert flags == (
        "--json",
        "--cache-dir",
        "/var/cache/henbackup",
        "-o",
        "s3.storage-class=STANDARD_IA",
        "-o",
        "s3.region=eu-west-1",
        "--limit-upload",
        "500",
        "--limit-download",
        "200",
        "--retry-lock",
        "8s",
    )


def test_global_flags_minimal() -> None:
    assert global_flags(target()) == ("--json",)


def test_make_command_puts_global_flags_after_the_subcommand() -> None:
    argv = make_command("restic", ("snapshots", "--tag", "backup-a"), ("--json",))
    assert argv == ("restic", "snapshots", "--json", "--tag", "backup-a")


def test_backup_args() -> None:
    request = BackupRequest("pictures", ("/home/me/Pictures", "-odd"), (".git", "*.tmp"), "rpi01")
    assert backup_args(request) == (
        "backup",
        "--tag",
        "backup-pictures",
        "--host",
        "rpi01",
        "--exclude",
        ".git",
        "--exclude",
        "*.tmp",
        "--",
        "/home/me/Pictures",
        "-odd",
    )
    assert backup_args(BackupRequest("p", ("/a",)), skip_if_unchanged=True) == (
        "backup",
        "--tag",
        "backup-p",
        "--skip-if-unchanged",
        "--",
        "/a",
    )


def test_snapshots_args() -> None:
    assert snapshots_args() == ("snapshots",)
    assert snapshots_args("grafana", "rpi01") == (
        "snapshots",
        "--tag",
        "backup-grafana",
        "--host",
        "rpi01",
    )
    assert snapshots_args(ids=["latest"]) == ("snapshots", "--", "latest")


def test_restore_args() -> None:
    assert restore_args("abc123", "/restore/here", ("/home/me/a", "/home/me/b")) == (
        "restore",
        "--target",
        "/restore/here",
        "--include",
        "/home/me/a",
        "--include",
        "/home/me/b",
        "--",
        "abc123",
    )


def test_forget_args_group_by_host_and_tags_without_prune() -> None:
    policy = Retention(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_within="1y2m")
    argv = forget_args(policy, "pictures", "rpi01")
    assert argv == (
        "forget",
        "--tag",
        "backup-pictures",
        "--host",
        "rpi01",
        "--group-by",
        "host,tags",
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "12",
        "--keep-within",
        "1y2m",
    )
    assert "--prune" not in argv


def test_keep_flags_all_and_none() -> None:
    everything = Retention(1, 2, 3, 4, 5, 6, "7d")
    assert keep_flags(everything) == (
        "--keep-last",
        "1",
        "--keep-hourly",
        "2",
        "--keep-daily",
        "3",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "5",
        "--keep-yearly",
        "6",
        "--keep-within",
        "7d",
    )
    assert keep_flags(Retention()) == ()


def test_other_commands() -> None:
    assert check_args() == ("check",)
    assert check_args("5%") == ("check", "--read-data-subset", "5%")
    assert UNLOCK_ARGS == ("unlock",)  # never --remove-all: live locks stay
    assert STATS_ARGS == ("stats", "--mode", "raw-data")
    assert CAT_CONFIG_ARGS == ("cat", "--no-lock", "config")


def test_no_secret_in_any_argv() -> None:
    t = Target(
        name="r",
        location=REST_LOCATION,
        password=PasswordSource("password", SECRET_PASSWORD),
        env=(("AWS_SECRET_ACCESS_KEY", SECRET_KEY),),
        options=("rest.connections=2",),
        upload_limit=1024,
    )
    flags = global_flags(t, Path("/cache"), 3)
    request = BackupRequest("b", ("/data",), host="h")
    argvs = [
        make_command("restic", args, flags)
        for args in (
            backup_args(request, True),
            snapshots_args("b", "h"),
            restore_args("id", "/dest"),
            forget_args(Retention(keep_last=1), "b", "h"),
            check_args("10%"),
            UNLOCK_ARGS,
            STATS_ARGS,
        )
    ]
    text = "\0".join("\0".join(argv) for argv in argvs)
    for secret in (SECRET_PASSWORD, SECRET_KEY, "s3cr3t", "127.0.0.1"):
        assert secret not in text


# --- environment ------------------------------------------------------------------------


def test_password_env_per_kind() -> None:
    assert password_env(PasswordSource("file", "/etc/pw")) == {"RESTIC_PASSWORD_FILE": "/etc/pw"}
    assert password_env(PasswordSource("command", "pass show x")) == {
        "RESTIC_PASSWORD_COMMAND": "pass show x"
    }
    literal = password_env(PasswordSource("password", SECRET_PASSWORD), fd=7)
    assert literal == {"RESTIC_PASSWORD_FILE": "/dev/fd/7"}
    with pytest.raises(ValueError):
        password_env(PasswordSource("password", SECRET_PASSWORD))


def test_child_env_strips_inherited_restic_variables() -> None:
    inherited = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "RESTIC_PASSWORD": "inherited-password",
        "RESTIC_PASSWORD_COMMAND": "echo inherited",
        "RESTIC_REPOSITORY": "/elsewhere",
        "RESTIC_REPOSITORY_FILE": "/elsewhere-file",
        "RESTIC_FROM_PASSWORD": "from",
        "RESTIC_CACHE_DIR": "/tmp/other-cache",
    }
    t = target(env=(("AWS_SECRET_ACCESS_KEY", SECRET_KEY), ("RESTIC_PASSWORD", "from-config")))
    env = child_env(inherited, t, {"RESTIC_PASSWORD_FILE": "/dev/fd/5"})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "RESTIC_PASSWORD_FILE": "/dev/fd/5",
        "RESTIC_REPOSITORY": t.location,
        "RESTIC_PROGRESS_FPS": PROGRESS_FPS,
    }


def test_child_env_lets_the_target_tune_restic() -> None:
    t = target(env=(("RESTIC_PACK_SIZE", "32"),))
    env = child_env({}, t, {"RESTIC_PASSWORD_COMMAND": "cmd"})
    assert env["RESTIC_PACK_SIZE"] == "32"
    assert env["RESTIC_PASSWORD_COMMAND"] == "cmd"


def test_secrets_and_redactor_hide_location_password_and_env() -> None:
    t = target(location=REST_LOCATION)
    secrets = secrets_of(t)
    text = (
        f"Fatal: create repository at {REST_LOCATION} failed; password {SECRET_PASSWORD}; "
        f"key {SECRET_KEY}; Head http://user:s3cr3t@127.0.0.1:1/repo/config; "
        "Head http://user:***@127.0.0.1:1/repo/config"
    )
    clean = Redactor.of(secrets)(text)
    for secret in (REST_LOCATION, SECRET_PASSWORD, SECRET_KEY, "s3cr3t", "user:"):
        assert secret not in clean
    assert "AKIAIOSFODNN7EXAMPLE" not in Redactor.of(secrets)("AKIAIOSFODNN7EXAMPLE")


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


# --- stderr and failures ------------------------------------------------------------------

WRONG_PASSWORD_014 = "Fatal: wrong password or no key found\n"
WRONG_PASSWORD_018 = (
    '{"message_type":"exit_error","code":12,"message":"Fatal: wrong password or no key found"}\n'
)
MISSING_014 = (
    "Fatal: unable to open config file: stat /tmp/exp/nothere/config: no such file or "
    "directory\nIs there a repository at the following location?\n/tmp/exp/nothere\n"
)
MISSING_018 = (
    '{"message_type":"exit_error","code":10,"message":"Fatal: repository does not exist: '
    "unable to open config file: stat /tmp/exp/nothere/config: no such file or directory\\n"
    'Is there a repository at the following location?\\n/tmp/exp/nothere"}\n'
)
# restic 0.18 without --json effect (cat config)
MISSING_018_TEXT = (
    "Fatal: repository does not exist: unable to open config file: stat /tmp/exp/none/config: "
    "no such file or directory\nIs there a repository at the following location?\n"
    "/tmp/exp/none\n"
)
REST_REFUSED_014 = (
    'Fatal: unable to open config file: client.Head: Head "http://user:***@127.0.0.1:1/repo/'
    'config": dial tcp 127.0.0.1:1: connect: connection refused\nIs there a repository at the '
    "following location?\nrest:http://user:***@127.0.0.1:1/repo/\n"
)
# restic 0.18 retries for minutes, then (here: interrupted) gives up
REST_REFUSED_018 = (
    'Stat(<config/>) returned error, retrying after 1.369083975s: Head "http://user:***@127.0.'
    '0.1:1/repo/config": dial tcp 127.0.0.1:1: connect: connection refused\n'
    "\x1b[2Ksignal terminated received, cleaning up\n"
    '{"message_type":"exit_error","code":1,"message":"Fatal: unable to open config file: '
    "context canceled\\nIs there a repository at the following location?\\n"
    'rest:http://user:***@127.0.0.1:1/repo/"}\n'
)
S3_REFUSED_014 = (
    'Fatal: unable to open config file: Stat: Get "http://127.0.0.1:1/bucket/?location=": dial '
    "tcp 127.0.0.1:1: connect: connection refused\nIs there a repository at the following "
    "location?\ns3:http://127.0.0.1:1/bucket\n"
)
DNS_014 = (
    'Fatal: unable to open config file: client.Head: Head "http://nonexistent.invalid/repo/'
    'config": dial tcp: lookup nonexistent.invalid on 10.255.255.53:53: no such host\nIs there '
    "a repository at the following location?\nrest:http://nonexistent.invalid/repo/\n"
)
SFTP_014 = (
    "subprocess ssh: ssh: connect to host 127.0.0.1 port 1: Connection refused\n"
    "Fatal: unable to open repository at sftp:user@127.0.0.1:/repo: unable to start the sftp "
    "session, error: EOF\n"
)
SFTP_018 = (
    "subprocess ssh: ssh: connect to host 127.0.0.1 port 1: Connection refused\n"
    '{"message_type":"exit_error","code":1,"message":"Fatal: unable to open repository at sftp:'
    "user@127.0.0.1:/repo: unable to start the sftp session, error: error receiving version "
    'packet from server: server unexpectedly closed connection: unexpected EOF"}\n'
)
LOCKED_014 = (
    "unable to create lock in backend: repository is already locked by PID 4677 on vm by root "
    "(UID 0, GID 0)\nlock was created at 2026-11-26 04:06:19 (662.534082ms ago)\nstorage ID "
    "c63d6073\nthe `unlock` command can be used to remove stale locks\n"
)
LOCKED_018 = (
    '{"message_type":"exit_error","code":11,"message":"unable to create lock in backend: '
    "repository is already locked by PID 4791 on vm by root (UID 0, GID 0)\\nlock was created "
    "at 2026-11-26 04:06:23 (557.699816ms ago)\\nstorage ID 7464808e\\nthe `unlock` command "
    'can be used to remove stale locks"}\n'
)
CHECK_FAILED_014 = (
    "Pack ID does not match, want 9090ca07028db4f2bcd52ca7fce660d9269304b901c9f65d87c03d3b6fa104"
    "cd, got 00cd7716bce2531c4fc255ac711c40113b3493bdc88ab880eaa0b9f77fb3646c\n"
    "Fatal: repository contains errors\n"
)
CHECK_FAILED_018 = (
    '{"message_type":"error","message":"error for tree 3206e4bc:\\n"}\n'
    '{"message_type":"error","message":"  decrypting blob \\u003ctree/3206e4bc\\u003e from '
    '08a28ea1 failed: ciphertext verification failed\\n"}\n'
    '{"message_type":"error","message":"\\nThe repository is damaged and must be repaired. '
    "Please follow the troubleshooting guide at https://restic.readthedocs.io/en/stable/077_"
    'troubleshooting.html .\\n\\n"}\n'
    '{"message_type":"exit_error","code":1,"message":"Fatal: repository contains errors"}\n'
)
UNREADABLE_014 = (
    '{"message_type":"error","error":{"Op":"read","Path":"/proc/4015/mem","Err":5},'
    '"during":"archival","item":"/proc/4015/mem"}\n'
    "Warning: at least one source file could not be read\n"
)
UNREADABLE_018 = (
    '{"message_type":"error","error":{"message":"failed to save /proc/4015/mem: read /proc/4015/'
    'mem: input/output error"},"during":"archival","item":"/proc/4015/mem"}\n'
    '{"message_type":"exit_error","code":3,"message":"Warning: at least one source file could '
    'not be read"}\n'
)
NO_SOURCE_014 = (
    "/tmp/exp/nonexist does not exist, skipping\nFatal: all target directories/files do not exist\n"
)
NO_SOURCE_018 = (
    "/tmp/exp/nonexist does not exist, skipping\n"
    '{"message_type":"exit_error","code":1,"message":"Fatal: all source directories/files do not '
    'exist"}\n'
)
INIT_EXISTS_014 = "Fatal: create repository at /tmp/exp/c14 failed: config file already exists\n\n"
NO_SNAPSHOT_014 = 'invalid id "deadbeef": no matching ID found for prefix "deadbeef"\n'
NO_SNAPSHOT_018 = (
    '{"message_type":"exit_error","code":1,"message":"Fatal: failed to find snapshot: no '
    'matching ID found for prefix \\"deadbeef\\""}\n'
)
INTERRUPTED_018 = (
    "\x1b[2Ksignal interrupt received, cleaning up\n"
    '{"message_type":"exit_error","code":1,"message":"Fatal: unable to save snapshot: context '
    'canceled"}\n'
)


def classify(stderr: str, code: int, features: Features, location: str = "/tmp/exp/nothere"):
    secrets = secrets_of(target(location=location))
    messages = [Redactor.of(secrets)(m) for m in stderr_messages(stderr)]
    return classify_failure("snapshots", code, messages, "r1", features)


@pytest.mark.parametrize(
    ("stderr", "code", "features", "kind"),
    [
        (WRONG_PASSWORD_014, 1, V014, WrongPassword),
        (WRONG_PASSWORD_018, 12, V018, WrongPassword),
        (MISSING_014, 1, V014, RepositoryMissing),
        (MISSING_018, 10, V018, RepositoryMissing),
        (MISSING_018_TEXT, 10, V018, RepositoryMissing),
        (REST_REFUSED_014, 1, V014, BackendUnreachable),
        (REST_REFUSED_018, 1, V018, BackendUnreachable),
        (S3_REFUSED_014, 1, V014, BackendUnreachable),
        (DNS_014, 1, V014, BackendUnreachable),
        (SFTP_014, 1, V014, BackendUnreachable),
        (SFTP_018, 1, V018, BackendUnreachable),
        (LOCKED_014, 1, V014, RepositoryLocked),
        (LOCKED_018, 11, V018, RepositoryLocked),
        (NO_SNAPSHOT_014, 1, V014, SnapshotNotFound),
        (NO_SNAPSHOT_018, 1, V018, SnapshotNotFound),
        (CHECK_FAILED_014, 1, V014, EngineError),
        (CHECK_FAILED_018, 1, V018, EngineError),
        (NO_SOURCE_014, 1, V014, EngineError),
        (NO_SOURCE_018, 1, V018, EngineError),
        (INTERRUPTED_018, 1, V018, EngineError),
    ],
)
def test_classify_failure(stderr: str, code: int, features: Features, kind: type) -> None:
    error = classify(stderr, code, features)
    assert type(error) is kind
    assert "\n" not in str(error)


def test_exit_codes_alone_are_enough_from_017() -> None:
    assert type(classify("", 12, V018)) is WrongPassword
    assert type(classify("", 11, V018)) is RepositoryLocked
    assert type(classify("", 10, V018)) is RepositoryMissing
    # 0.14 had no such codes: an unexplained exit code is just a failure
    assert type(classify("", 12, V014)) is EngineError


def test_reasons_are_one_line_and_useful() -> None:
    assert str(classify(NO_SOURCE_014, 1, V014)) == (
        "restic snapshots failed on repository r1: all target directories/files do not exist"
    )
    assert str(classify(LOCKED_014, 1, V014)) == (
        "repository r1 is locked by another process: repository is already locked by PID 4677 "
        "on vm by root (UID 0, GID 0)"
    )
    assert str(classify(SFTP_014, 1, V014)) == (
        "repository r1 is unreachable: subprocess ssh: ssh: connect to host 127.0.0.1 port 1: "
        "Connection refused"
    )
    assert str(classify("", 2, V014)) == "restic snapshots failed on repository r1: exit code 2"


def test_messages_never_carry_the_location() -> None:
    error = classify(INIT_EXISTS_014, 1, V014, location="/tmp/exp/c14")
    assert "/tmp/exp/c14" not in str(error)
    assert str(error) == (
        "restic snapshots failed on repository r1: create repository at <redacted> failed: "
        "config file already exists"
    )
    unreachable = classify(REST_REFUSED_014, 1, V014, location=REST_LOCATION)
    assert "s3cr3t" not in str(unreachable) and "user" not in str(unreachable)
    assert "connection refused" in str(unreachable)


def test_stderr_messages_render_json_errors_of_both_versions() -> None:
    assert stderr_messages(UNREADABLE_014) == [
        "read /proc/4015/mem: Input/output error",
        "Warning: at least one source file could not be read",
    ]
    assert stderr_messages(UNREADABLE_018) == [
        "failed to save /proc/4015/mem: read /proc/4015/mem: input/output error",
        "Warning: at least one source file could not be read",
    ]
    assert stderr_messages(CHECK_FAILED_018)[:2] == [
        "error for tree 3206e4bc:",
        "decrypting blob <tree/3206e4bc> from 08a28ea1 failed: ciphertext verification failed",
    ]
    assert stderr_messages(INTERRUPTED_018)[0] == "signal interrupt received, cleaning up"
    assert stderr_messages("\n\n  \n") == []


# --- reasons: the fatal line, not a retry; a crash in one line ------------------------------

# restic 0.14, its REST server killed mid-backup (then interrupted): retries, no Fatal yet
RETRIES_014 = (
    'Save(<data/9d3a4cba41>) returned error, retrying after 552.330144ms: client.Post: Post "'
    'http://127.0.0.1:18765/data/9d3a4cba41c8": dial tcp 127.0.0.1:18765: connect: connection '
    "refused\n"
    'Save(<data/9d3a4cba41>) returned error, retrying after 1.080381816s: client.Post: Post "'
    'http://127.0.0.1:18765/data/9d3a4cba41c8": dial tcp 127.0.0.1:18765: connect: connection '
    "refused\n"
)
# restic 0.18, the same: the first retry saw the connection close under it
RETRIES_018 = (
    'Save(<data/a546b85c18>) returned error, retrying after 1.201851313s: Post "http://:***@127.'
    '0.0.1:18765/data/a546b85c18c0": readfrom tcp 127.0.0.1:56170->127.0.0.1:18765: write tcp '
    "127.0.0.1:56170->127.0.0.1:18765: use of closed network connection\n"
    'Save(<data/a546b85c18>) returned error, retrying after 2.602979079s: Post "http://:***@127.'
    '0.0.1:18765/data/a546b85c18c0": dial tcp 127.0.0.1:18765: connect: connection refused\n'
)
# what restic 0.14 prints when its retries run out (shaped as restic's cmd/restic prints
# an error: its retries take minutes, too long to capture here)
GAVE_UP_014 = RETRIES_014 + (
    'Fatal: unable to save snapshot: client.Post: Post "http://127.0.0.1:18765/data/9d3a4cba41c8":'
    " dial tcp 127.0.0.1:18765: connect: connection refused\n"
)
# Go's format of a panic (restic could not be made to panic on purpose)
PANIC = (
    "panic: runtime error: invalid memory address or nil pointer dereference\n"
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x8c2b1d]\n\n"
    "goroutine 1 [running]:\n"
    "github.com/restic/restic/internal/archiver.(*Archiver).Snapshot(0x0, {0xd3a6c8, 0xc0})\n"
    "\t/build/restic/internal/archiver/archiver.go:810 +0x3d\n"
    "main.runBackup({0xd3a6c8, 0xc0000a8000}, {0x0, 0x0, 0x0})\n"
    "\t/build/restic/cmd/restic/cmd_backup.go:640 +0x1b5\n"
)
# restic 0.14 sent SIGQUIT: Go's dump of every goroutine (real, cut to its start)
SIGQUIT_014 = (
    "SIGQUIT: quit\nPC=0x46ad9d m=2 sigcode=0\n\ngoroutine 0 [idle]:\nruntime.usleep()\n"
    "\truntime/sys_linux_amd64.s:140 +0x3d fp=0x7f64032eddb8 sp=0x7f64032edd98 pc=0x46ad9d\n"
    "runtime.sysmon()\n"
    "\truntime/proc.go:5153 +0xa5 fp=0x7f64032ede28 sp=0x7f64032eddb8 pc=0x445b45\n"
    "\ngoroutine 1 [runnable]:\nruntime.asyncPreempt2()\n"
)


def test_retry_cause_keeps_what_went_wrong() -> None:
    first, _ = stderr_messages(RETRIES_014)
    assert retry_cause(first) == (
        'client.Post: Post "http://127.0.0.1:18765/data/9d3a4cba41c8": dial tcp 127.0.0.1:18765: '
        "connect: connection refused"
    )
    assert retry_cause("Fatal: repository contains errors") == "Fatal: repository contains errors"


@pytest.mark.parametrize(
    ("stderr", "features"), [(REST_REFUSED_018, V018), (RETRIES_014, V014), (RETRIES_018, V018)]
)
def test_an_unreachable_backend_is_quoted_from_the_cause_not_the_retry(
    stderr: str, features: Features
) -> None:
    error = classify(stderr, 1, features)
    assert type(error) is BackendUnreachable
    assert "retrying" not in str(error), error
    assert str(error).endswith("connect: connection refused"), error


def test_restic_giving_up_is_quoted_from_its_fatal_line() -> None:
    error = classify(GAVE_UP_014, 1, V014)
    assert str(error) == (
        'repository r1 is unreachable: unable to save snapshot: client.Post: Post "http://'
        '127.0.0.1:18765/data/9d3a4cba41c8": dial tcp 127.0.0.1:18765: connect: connection refused'
    )


def test_a_go_crash_is_one_line_not_a_stack_frame() -> None:
    assert str(classify(PANIC, 2, V014)) == (
        "restic snapshots failed on repository r1: restic crashed: panic: runtime error: invalid "
        "memory address or nil pointer dereference"
    )
    assert str(classify(SIGQUIT_014, 2, V014)) == (
        "restic snapshots failed on repository r1: restic crashed: SIGQUIT: quit"
    )


def test_a_killed_restic_says_by_what() -> None:
    assert fatal_reason([], -9) == "restic was killed by SIGKILL"
    assert fatal_reason(["some warning"], -9) == "restic was killed by SIGKILL"
    assert fatal_reason(["Fatal: out of luck"], -15) == "out of luck"


def test_explanation_of_a_run_in_progress() -> None:
    """What a stalled restic last said: the cause of its latest retry."""
    assert explanation(stderr_messages(RETRIES_018)) == (
        'Post "http://:***@127.0.0.1:18765/data/a546b85c18c0": dial tcp 127.0.0.1:18765: '
        "connect: connection refused"
    )
    assert explanation([]) is None


def test_status_counters_move_with_progress() -> None:
    assert status_counters(STATUS_014) == (2002, 173011337)
    assert status_counters('{"message_type":"summary","files_new":1}') is None
    assert status_counters("Load(<key/1>) returned error") is None
