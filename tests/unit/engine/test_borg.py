"""borg's command lines, environment and output, as pure functions (engine/borg.py); the
engine against real borg is in tests/integration/test_engine_contract.py."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from henbackup.config.model import PasswordSource, Retention
from henbackup.engine import borg
from henbackup.engine.base import BackupRequest, BackupResult, Target, TransferProgress
from henbackup.engine.borg import (
    BorgEngine,
    LogLine,
    archive_glob,
    archive_name,
    archive_second,
    backup_args,
    child_env,
    classify_failure,
    exclude_patterns,
    global_flags,
    info_size,
    keep_flags,
    keep_within,
    parse_archives,
    parse_progress,
    parse_prune,
    parse_version,
    password_env,
    restore_args,
    scan_args,
    split_name,
    status_counters,
    version_problem,
)
from henbackup.engine.borg_scan import ScanTotal
from henbackup.engine.engines import Engines, engine_class
from henbackup.engine.restic import ResticEngine
from henbackup.engine.run import read_whole
from henbackup.errors import (
    AccessRefused,
    BackendUnreachable,
    EngineError,
    RepositoryLocked,
    RepositoryMissing,
    WrongPassword,
)

TARGET = Target("nas", "ssh://backup@nas.lan/srv/borg", PasswordSource("password", "s3cret pw"))


def test_archive_names_scope_one_backup_of_one_host() -> None:
    moment = datetime(2026, 12, 2, 7, 0, 0, 123456, tzinfo=UTC)
    name = archive_name("docs", "rpi01", moment)
    assert name == "docs@rpi01@2026-12-02T07:00:00.123456"
    assert split_name(name) == ("docs", "rpi01")
    assert split_name("made-by-hand") == (None, "")
    assert archive_glob("docs", "rpi01") == "docs@rpi01@*"
    assert archive_glob("docs", None) == "docs@*@*"  # never docs-old@...
    assert archive_glob(None, "rpi01") == "*@rpi01@*"


def test_backup_command_line_holds_no_secret_and_records_paths() -> None:
    request = BackupRequest("docs", ("/home/me/{odd}",), (".git", "/home/me/tmp/"), "h")
    argv = backup_args(request, "docs@h@t", ("/home/me/{odd}",))
    assert argv[-2:] == ("::docs@h@t", "/home/me/{odd}")
    comment = argv[argv.index("--comment") + 1]
    assert comment == '{{"paths": ["/home/me/{{odd}}"]}}'  # borg expands {placeholders}
    assert exclude_patterns((".git", "/home/me/tmp/", "cache/*.tmp")) == (
        "--exclude",
        "sh:**/.git",
        "--exclude",
        "sh:/home/me/tmp",
        "--exclude",
        "sh:**/cache/*.tmp",
    )
    flags = global_flags(Target("nas", "/srv", TARGET.password, upload_limit=100_000), 30.0)
    assert flags == ("--log-json", "--lock-wait", "30", "--upload-ratelimit", "97")
    assert not any("s3cret" in part or "nas.lan" in part for part in (*argv, *flags))


def test_includes_reach_borg_in_an_explicit_style_never_read_from_the_users_text() -> None:
    """borg reads a prefix such as `re:` from an extract path: a plain include must stay
    that one path (restore's --in-place check looks at it alone), a pattern restic's."""
    includes = ("/srv/re:xfile", "/", "/srv/*/site", "*.html", "cache/tmp")
    assert restore_args("docs@h@t", includes)[-6:] == (
        "::docs@h@t",
        "pp:/srv/re:xfile",
        "pp:/",
        "sh:/srv/*/site",
        "sh:**/*.html",
        "sh:**/cache/tmp",
    )


def test_password_and_location_go_through_the_environment() -> None:
    assert password_env(PasswordSource("password", "x"), 7) == {"BORG_PASSPHRASE_FD": "7"}
    assert password_env(PasswordSource("file", "/etc/my secret")) == {
        "BORG_PASSCOMMAND": "cat -- '/etc/my secret'"
    }
    assert password_env(PasswordSource("command", "pass show nas")) == {
        "BORG_PASSCOMMAND": "pass show nas"
    }
    inherited = {"PATH": "/bin", "BORG_PASSPHRASE": "theirs", "BORG_REPO": "/elsewhere"}
    given = (("BORG_PASSPHRASE", "x"), ("BORG_RSH", "ssh -i /etc/henbackup/key"))
    target = Target("nas", "/srv/borg", TARGET.password, env=given)
    env = child_env(inherited, target, {"BORG_PASSPHRASE_FD": "7"})
    assert env["BORG_REPO"] == "/srv/borg" and "BORG_PASSPHRASE" not in env
    assert env["BORG_RSH"] == "ssh -i /etc/henbackup/key"  # the repository's own setting
    assert env["BORG_HOSTNAME_IS_UNIQUE"] == "yes" and env["PATH"] == "/bin"


def test_retention_flags() -> None:
    policy = Retention(keep_last=2, keep_daily=7, keep_within="1y2m")
    assert keep_flags(policy) == (
        "--keep-last",
        "2",
        "--keep-daily",
        "7",
        "--keep-within",
        f"{(365 + 62) * 24}H",
    )
    assert keep_within("30d") == "30d" and keep_within("12h") == "12H"


def test_prune_lines_say_what_was_kept_and_removed() -> None:
    kept, gone = "a" * 64, "b" * 64
    lines = [
        LogLine(f"Keeping archive (rule: daily #1):   docs@h@x   Wed [{kept}]", "INFO"),
        LogLine(f"Pruning archive (1/1):              docs@h@y   Tue [{gone}]", "INFO"),
        LogLine("something else", "INFO"),
    ]
    result = parse_prune(lines)
    assert (result.kept, result.removed) == ((kept,), (gone,))


def test_archives_are_listed_oldest_first_with_backup_and_host() -> None:
    doc = {
        "archives": [
            {
                "name": "docs@h2@2026-12-02T07:00:00.500000",
                "id": "2" * 64,
                "time": "2026-12-02T07:00:00.000000",
                "comment": '{"paths": ["/b"]}',
            },
            {
                "name": "docs@h1@2026-12-02T07:00:00.100000",
                "id": "1" * 64,
                "time": "2026-12-02T07:00:00.000000",
                "comment": "not json",
            },
            {
                "name": "by-hand",
                "id": "3" * 64,
                "time": "2026-12-02T06:00:00.000000",
                "hostname": "vm",
            },
        ]
    }
    doc["archives"].append(
        {"name": "docs-old@h1@2026-12-02T07:00:00.300000", "id": "4" * 64,
         "time": "2026-12-02T07:00:00.000000"}
    )  # fmt: skip
    found = [snapshot for _, snapshot in parse_archives(doc)]
    assert [(s.backup, s.host, s.paths) for s in found] == [
        (None, "vm", ()),
        ("docs", "h1", ()),
        ("docs-old", "h1", ()),  # made after docs@h1, in the same second: not by name
        ("docs", "h2", ("/b",)),
    ]
    assert found[1].tags == ("backup-docs",) and found[1].short_id == "1" * 8


@pytest.mark.parametrize(
    ("msgid", "error"),
    [
        ("PassphraseWrong", WrongPassword),
        ("Repository.DoesNotExist", RepositoryMissing),
        ("Repository.InvalidRepository", RepositoryMissing),
        ("LockTimeout", RepositoryLocked),
        ("ConnectionClosed", BackendUnreachable),
        ("", EngineError),
    ],
)
def test_failures_are_typed_by_borgs_msgid(msgid: str, error: type[EngineError]) -> None:
    lines = [LogLine("it went\nwrong", "ERROR", msgid)]
    failure = classify_failure("list", 2, lines, "nas")
    assert type(failure) is error
    assert "\n" not in str(failure) and "repository nas" in str(failure)


def test_a_failure_with_no_message_says_its_exit_code() -> None:
    assert str(classify_failure("check", 2, [], "nas")) == (
        "borg check failed on repository nas: exit code 2"
    )


def test_the_repositorys_engine_is_chosen_by_its_target() -> None:
    engines = Engines({"restic": "/usr/bin/restic", "borg": "/usr/bin/borg"})
    assert isinstance(engines.of(TARGET), ResticEngine)
    borg = engines.of(Target("b", "/srv/borg", TARGET.password, engine="borg"))
    assert isinstance(borg, BorgEngine) and borg.binary == "/usr/bin/borg"
    assert engines.of(Target("b2", "/srv/other", TARGET.password, engine="borg")) is borg
    with pytest.raises(EngineError, match="unknown engine 'tar'"):
        engine_class("tar")


# What `borg --version` printed: Debian 11 (1.1.16), 12 (1.2.4), Ubuntu 22.04 (1.2.0),
# Debian 13 (1.4.0), the standalone binary (named after its file), a borg 2 beta.
@pytest.mark.parametrize(
    ("text", "version", "served"),
    [
        ("borg 1.1.16\n", (1, 1, 16), False),
        ("borg 1.2.0\n", (1, 2, 0), True),
        ("borg 1.2.4\n", (1, 2, 4), True),
        ("borg 1.4.0\n", (1, 4, 0), True),
        ("borg-linux64 1.2.8\n", (1, 2, 8), True),
        ("borg 2.0.0b14\n", (2, 0, 0), False),
        ("", None, False),
        ("Traceback (most recent call last):\n", None, False),
    ],
)
def test_borgs_version_is_read_from_its_own_words(
    text: str, version: tuple[int, int, int] | None, served: bool
) -> None:
    assert parse_version(text) == version
    problem = version_problem(text, "/usr/bin/borg")
    assert (problem is None) is served
    if problem is not None:
        assert "\n" not in problem and problem.startswith("borg (/usr/bin/borg) ")
        assert "henbackup needs borg 1.2 or later, before 2" in problem
        if version is not None and version >= (2, 0, 0):
            assert "is borg 2 or later (another command line)" in problem


def test_a_borg_too_old_says_so_in_one_line() -> None:
    assert version_problem("borg 1.1.16\n", "borg") == (
        "borg (borg) is too old (`borg --version` said 'borg 1.1.16'): henbackup needs borg 1.2"
        " or later, before 2 (Debian 12's borgbackup): install it or set daemon.borg"
    )


# borg forwards what ssh said as "Remote: ..." warnings, then fails with its own line.
CLOSED = LogLine(
    "Connection closed by remote host. Is borg working on the server?",
    "ERROR",
    "ConnectionClosedWithHint",
)


def test_ssh_refusing_the_key_or_host_is_access_refused_in_one_line() -> None:
    denied = [LogLine("Remote: backup@nas.lan: Permission denied (publickey).", "WARNING"), CLOSED]
    assert str(classify_failure("list", 2, denied, "nas")) == (
        "repository nas refused access (Permission denied (publickey).): check the user and key"
        " its ssh logs in with (BORG_RSH in its env, or ~/.ssh/config)"
    )
    host = [LogLine("Remote: Host key verification failed.", "WARNING"), CLOSED]
    failure = classify_failure("list", 2, host, "nas")
    assert type(failure) is AccessRefused
    assert str(failure) == (
        "repository nas: the server's host key is not one that known_hosts holds: make sure it"
        " is the right server, then update known_hosts"
    )


def test_ssh_closing_without_a_word_says_what_to_check() -> None:
    failure = classify_failure("list", 2, [CLOSED], "nas")
    assert type(failure) is BackendUnreachable
    assert str(failure) == (
        "repository nas is unreachable: ssh opened no borg session: check that the server is"
        " up, has borg on its PATH and accepts the user, key and host key its ssh uses"
        " (Connection closed by remote host. Is borg working on the server?)"
    )


def test_the_engine_refuses_a_borg_it_does_not_speak_before_any_command(tmp_path: Path) -> None:
    # A stand-in for Debian 11's borg 1.1.16 (no 1.1 is installed here): it logs each call.
    calls = tmp_path / "calls"
    old = tmp_path / "borg"
    old.write_text(f"#!/bin/sh\necho \"$1\" >> {calls}\necho 'borg 1.1.16'\n")
    old.chmod(0o755)
    engine = BorgEngine(str(old), cache_dir=tmp_path / "cache")
    for _ in range(2):
        with pytest.raises(EngineError, match=r"^borg \(.*\) is too old .*daemon\.borg$"):
            engine.snapshots(Target("b", str(tmp_path / "repo"), TARGET.password, engine="borg"))
    assert calls.read_text() == "--version\n"  # asked once, and nothing else run


def test_an_archive_is_noted_by_the_second_borg_started_it() -> None:
    doc = {"archive": {"id": "1" * 64, "start": "2026-12-02T11:18:30.000000"}}
    assert archive_second(doc) == int(datetime(2026, 12, 2, 11, 18, 30).astimezone().timestamp())
    later = {"archive": {"id": "1" * 64, "start": "2026-12-02T11:18:30.250000"}}
    assert archive_second(later) == archive_second(doc) + 1  # a part of a second: the next


def test_a_local_permission_error_is_no_ssh_refusal() -> None:
    local = [LogLine("Permission denied (while opening /srv/borg/config)", "ERROR")]
    assert type(classify_failure("list", 2, local, "nas")) is EngineError


def test_the_scan_walks_as_the_backup_does_in_a_dry_run() -> None:
    request = BackupRequest("docs", ("/srv/a", "/srv/b"), excludes=("*.tmp", "/srv/a/x"))
    walk = backup_args(request, "NAME")
    args = scan_args(request, "NAME")
    assert args[:4] == ("create", "--dry-run", "--list", "--filter=-")
    tail = walk[walk.index("--exclude") :]
    assert args[4:] == tail  # the same excludes, archive and paths


def test_the_scan_adds_up_the_regular_files_borg_would_read(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "a").write_bytes(b"a" * 10)
    (tmp_path / "dir" / "b").write_bytes(b"b" * 5)
    (tmp_path / "link").symlink_to("a")
    (tmp_path / "hard").hardlink_to(tmp_path / "a")  # borg reads it once
    scan = ScanTotal()

    def listed(path: Path | str, status: str = "-") -> str:
        return json.dumps({"type": "file_status", "status": status, "path": str(path)})

    for name in ("a", "dir/b", "dir", "link", "hard", "gone", ""):
        scan.feed(listed(tmp_path / name))
    scan.feed(listed(tmp_path / "dir" / "b", "x"))  # excluded: borg says "x" (not listed)
    scan.feed('{"type": "log_message", "message": "a warning", "levelname": "WARNING"}')
    scan.feed("not json, with file_status in it")
    assert scan.total is None  # not until the listing ended
    scan.end(1)  # a warning (a path not there): whole all the same
    assert scan.total == (2, 15)
    failed = ScanTotal()
    failed.feed(listed(tmp_path / "a"))
    failed.end(-9)
    assert failed.total is None


def test_a_backup_ends_at_100_of_the_scan_else_of_what_borg_read() -> None:
    result = BackupResult("id", 1, 0, 0, 10, 120, 2.0)
    document = {"archive": {"stats": {"nfiles": 1, "original_size": 120}}}
    reports: list[TransferProgress] = []
    BorgEngine._report_end(reports.append, None, (1, 100), result, document)
    BorgEngine._report_end(reports.append, None, None, result, document)  # no scan total
    assert [(p.fraction, p.files_done, p.bytes_done, p.total_bytes) for p in reports] == [
        (1.0, 1, 100, 100),
        (1.0, 1, 120, 120),
    ]


@pytest.mark.parametrize(
    "line",
    [
        '{"type":"archive_progress","nfiles":"x","original_size":NaN,"time":1e400}',
        '{"type":"archive_progress","nfiles":1e400,"original_size":Infinity,"time":NaN}',
        '{"type":"archive_progress","nfiles":' + "9" * 400 + ',"time":' + "9" * 400 + "}",
    ],
)
def test_odd_numbers_in_a_progress_line_read_as_unknown(line: str) -> None:
    assert status_counters(line) == (0, 0)
    progress = parse_progress(json.loads(line), 0.0)
    assert progress is not None and (progress.files_done, progress.bytes_done) == (0, 0)


def test_an_archive_comment_of_no_paths_records_none() -> None:
    """Anyone who may write the repository writes comments: one nested too deep for json
    once raised RecursionError, and the list-snapshots job died with every listing."""
    deep = "[" * 30_000 + "]" * 30_000
    for comment in (deep, '{"paths": ' + deep + "}", "{}", '{"paths": 1}', "[1]"):
        archive = {"name": "a@h@t", "id": "1" * 64, "time": "2024-01-01T00:00:00"}
        ((_, snapshot),) = parse_archives({"archives": [{**archive, "comment": comment}]})
        assert snapshot.paths == ()


def test_an_archive_list_or_info_of_unexpected_shape_is_an_engine_error() -> None:
    """As restic's snapshot list: a record borg would not print fails the list."""
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    for archive in (
        {"name": "x", "time": "2024-01-01T00:00:00"},
        {"name": deep, "id": "1", "time": "2024-01-01T00:00:00"},
    ):
        with pytest.raises(EngineError) as error:
            parse_archives({"archives": [archive]})
        assert str(error.value) == "borg printed an archive list of unexpected shape"
    for info in ({"cache": None}, {"cache": {"stats": [1]}}):
        with pytest.raises(EngineError) as error:
            info_size(info)
        assert str(error.value) == "borg printed an info of unexpected shape"
    assert info_size({"cache": {"stats": {"unique_csize": 12}}}) == 12
    assert info_size({}) == 0  # as before: what borg leaves out is 0


def test_a_result_over_a_mebibyte_is_read_whole(tmp_path: Path) -> None:
    """borg's --json result (stdout) was kept as its first and last 512 KiB, joined: a list
    of thousands of archives no longer parsed, and snapshots, restore and stats failed."""
    archives = [
        {
            "name": f"pictures@host@2026-01-01T00:00:{n:06d}",
            "id": f"{n:064x}",
            "time": "2026-01-01T00:00:00.000000",
            "comment": json.dumps({"paths": ["/p" * 20]}),
        }
        for n in range(10_000)
    ]
    text = json.dumps({"archives": archives})
    assert len(text) > 2 << 20
    with tempfile.TemporaryFile() as stdout:
        stdout.write(text.encode())
        stdout.flush()
        read = BorgEngine("borg", cache_dir=tmp_path)._read_other(stdout)
    assert len(parse_archives(json.loads(read))) == 10_000


def test_a_result_past_the_limit_is_refused(tmp_path: Path) -> None:
    with tempfile.TemporaryFile() as stdout:
        stdout.truncate(2 << 20)
        with pytest.raises(EngineError, match=r"^borg printed a result over 1 MiB long$"):
            read_whole(stdout, "borg", limit=1 << 20)


def test_a_run_of_a_million_warnings_keeps_its_first_and_last_lines_only() -> None:
    """borg names each file it could not read: its log must not take the job's memory,
    and its last words (why it failed) are kept."""
    listener = borg._Listener(redact=str)
    for n in range(20_000):
        line = {"type": "log_message", "levelname": "WARNING", "message": f"/srv/{n}: denied"}
        listener.feed(json.dumps(line))
    listener.feed(json.dumps({"type": "log_message", "levelname": "ERROR", "message": "gone"}))
    lines = listener.lines
    assert len(lines) == borg.KEPT_LINES + 1 + borg.KEPT_LAST
    assert lines[0].text == "/srv/0: denied" and lines[-1] == borg.LogLine("gone", "ERROR")
    dropped = 20_001 - borg.KEPT_LINES - borg.KEPT_LAST
    assert lines[borg.KEPT_LINES].text == f"... {dropped} more lines of borg's not kept"
    assert lines[borg.KEPT_LINES + 1].text == f"/srv/{borg.KEPT_LINES + dropped}: denied"


@pytest.mark.parametrize(
    "content",
    [
        b"9" * 400,  # made min(1.0, second + 1 - time.time()) raise OverflowError
        b"9" * 30,  # short, but no second of this era
        b"-5\n",
        b"\xff\n",
        b"soon\n",
    ],
)
def test_a_corrupt_last_archive_mark_is_as_none(tmp_path: Path, content: bytes) -> None:
    """A corrupt mark is as no mark (long ago): the backup neither dies nor waits."""
    mark = tmp_path / "last-mark"
    mark.write_bytes(content)
    second = borg._read_second(mark)
    assert second == 0
    assert min(1.0, second + 1 - 1.8e9) < 0  # no pause, and no overflow


def test_a_last_archive_mark_through_a_link_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("1800000000\n")
    (tmp_path / "last-mark").symlink_to(tmp_path / "elsewhere")
    assert borg._read_second(tmp_path / "last-mark") == 0
    assert borg._read_second(tmp_path / "elsewhere") == 1800000000
