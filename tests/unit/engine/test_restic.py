"""The restic engine's command lines and environments: versions, flags, argv, env."""

from __future__ import annotations

from pathlib import Path

import pytest

from henbackup.config.model import PasswordSource, Retention
from henbackup.engine.base import BackupRequest, Target
from henbackup.engine.restic import (
    CAT_CONFIG_ARGS,
    PROGRESS_FPS,
    STATS_ARGS,
    UNLOCK_ARGS,
    Features,
    backup_args,
    check_args,
    child_env,
    forget_args,
    global_flags,
    keep_flags,
    kib_per_second,
    make_command,
    parse_version,
    password_env,
    restore_args,
    secrets_of,
    snapshots_args,
)
from henbackup.redact import Redactor

from .samples import REST_LOCATION, SECRET_KEY, SECRET_PASSWORD, V014, V018, target

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
    assert not (V014.skip_if_unchanged or V014.exit_codes)
    assert not V014.restore_progress
    v016 = Features((0, 16, 4))
    assert v016.restore_progress
    assert not (v016.skip_if_unchanged or v016.exit_codes)
    assert V018.skip_if_unchanged and V018.exit_codes


# --- command lines ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "kib"), [(50 * 1024, 50), (1024 * 1024, 1024), (1500, 1), (1023, 1), (1, 1)]
)
def test_limits_are_whole_kib_per_second_at_least_one(limit: int, kib: int) -> None:
    assert kib_per_second(limit) == kib


def test_global_flags_everything() -> None:
    t = target(options=("s3.storage-class=STANDARD_IA", "s3.region=eu-west-1"))
    t = Target(**{**t.__dict__, "upload_limit": 500 * 1024, "download_limit": 200 * 1024 + 1})
    flags = global_flags(t, Path("/var/cache/henbackup"))
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
    flags = global_flags(t, Path("/cache"))
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
