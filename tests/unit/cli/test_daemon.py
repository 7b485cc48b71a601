import grp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from henbackup.cli.daemon import main
from henbackup.config.load import load_config
from henbackup.errors import ConfigError

VALID = """
[repositories.local]
location = "/srv/restic"
password = "not-shown"

[backups.pictures]
paths = ["/home/me/Pictures"]
repositories = ["local"]
schedule = ["1d"]
"""

FIVE_MISTAKES = """
[daemon]
max_concurent_jobs = 2

[repositories.local]
location = "/srv/restic"
password = "x"
password_file = "/etc/henbackup/secret"

[backups.pictures]
paths = ["/home/me/Pictures"]
repositories = ["lcoal"]
schedule = ["1x"]
upload_limit = "${HENBACKUP_TEST_UNSET_VARIABLE}"
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.delenv("HENBACKUP_TEST_UNSET_VARIABLE", raising=False)

    def write(text: str) -> str:
        path = tmp_path / "henbackup.toml"
        path.write_text(text)
        path.chmod(0o600)  # as a config holding a password should be
        return str(path)

    return write


def test_a_valid_config_prints_the_plan_and_exits_0(config, capsys):
    assert main(["--config", config(VALID), "check-config"]) == 0
    out, err = capsys.readouterr()
    assert "pictures" in out
    assert "local" in out
    assert "not-shown" not in out
    assert err == ""


def test_every_problem_is_one_line_with_file_and_key_path(config, capsys):
    path = config(FIVE_MISTAKES)
    assert main(["--config", path, "check-config"]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == ""
    assert len(lines) == 5, err
    assert all(line.startswith(f"{path}: ") for line in lines)
    keys = {line.removeprefix(f"{path}: ").split(":")[0] for line in lines}
    assert keys == {
        "daemon.max_concurent_jobs",
        "repositories.local",
        "backups.pictures.repositories[0]",
        "backups.pictures.schedule[0]",
        "backups.pictures.upload_limit",
    }


def test_a_missing_config_file_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nowhere.toml"
    assert main(["--config", str(missing), "check-config"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(missing) in err


@pytest.mark.parametrize("misplaced", [["--config", "x.toml"], ["--config=x.toml"]])
def test_an_option_written_after_the_command_is_said_to_go_before_it(misplaced, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["check-config", *misplaced])
    assert exit.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert (
        last_line
        == "henbackup: error: --config goes before the command: henbackup --config ... COMMAND"
    )


def test_an_unknown_backup_is_a_usage_error(config, capsys):
    assert main(["--config", config(VALID), "backup", "music"]) == 2
    assert capsys.readouterr().err == ("henbackup: no backup named 'music' (defined: pictures)\n")


def test_the_config_path_comes_from_the_environment(config, monkeypatch, capsys):
    monkeypatch.setenv("HENBACKUP_CONFIG", config(VALID))
    assert main(["check-config"]) == 0


# --- the engines' binaries --------------------------------------------------------------

WITH_BORG = """
[daemon]
borg = "{borg}"

[repositories.local]
location = "/srv/restic"
password = "not-shown"

[repositories.vault]
engine = "borg"
location = "/srv/borg"
password = "not-shown"

[backups.pictures]
paths = ["/home/me/Pictures"]
repositories = ["local", "vault"]
"""


def test_check_config_refuses_a_restic_that_cannot_run_or_is_not_restic(config, capsys):
    """Before: valid, and every backup then failed with "cannot run restic"."""
    for binary, said in (
        (
            "/nonexistent/restic",
            "cannot run restic (/nonexistent/restic): No such file or directory",
        ),
        ("/bin/true", "/bin/true does not say it is restic (restic version)"),
    ):
        path = config(f'[daemon]\nrestic = "{binary}"\n' + VALID)
        assert main(["--config", path, "check-config"]) == 1
        assert capsys.readouterr().err == (
            f"{path}: daemon.restic: {said}: install restic (apt install restic), or set the"
            " path of its binary\n"
        )


def test_check_config_accepts_the_real_borg_1_2(config, capsys):
    assert main(["--config", config(WITH_BORG.format(borg="/usr/bin/borg")), "check-config"]) == 0
    assert capsys.readouterr().err == ""


def test_check_config_refuses_a_borg_too_old_or_missing_in_one_line(config, capsys, tmp_path):
    # A stand-in for Debian 11's borg 1.1.16 (no 1.1 is installed here): only its answer.
    old = tmp_path / "borg-1.1"
    old.write_text("#!/bin/sh\necho 'borg 1.1.16'\n")
    old.chmod(0o755)
    path = config(WITH_BORG.format(borg=old))
    assert main(["--config", path, "check-config"]) == 1
    assert capsys.readouterr().err == (
        f"{path}: repositories.vault.engine: borg ({old}) is too old (`borg --version` said"
        " 'borg 1.1.16'): henbackup needs borg 1.2 or later, before 2 (Debian 12's"
        " borgbackup): install it or set daemon.borg\n"
    )
    missing = tmp_path / "no-borg"
    path = config(WITH_BORG.format(borg=missing))
    assert main(["--config", path, "check-config"]) == 1
    assert capsys.readouterr().err == (
        f"{path}: repositories.vault.engine: cannot run borg ({missing}): No such file or"
        " directory\n"
    )


# --- secrets at rest ------------------------------------------------------------------------

WITH_FILE = """
[repositories.local]
location = "/srv/restic"
password_file = "{secret}"

[backups.pictures]
paths = ["/home/me/Pictures"]
repositories = ["local"]
"""
USERS = grp.getgrnam("users").gr_gid


@pytest.mark.parametrize(
    ("mode", "who"),
    [
        (0o644, "everyone (mode 0644)"),
        (0o606, "everyone (mode 0606)"),
        (0o640, "group users (mode 0640)"),
    ],
)
def test_a_password_in_a_config_others_may_read_is_one_warning_with_the_fix(
    config, capsys, mode, who
):
    path = config(VALID)
    os.chown(path, 0, USERS)
    os.chmod(path, mode)
    assert main(["--config", path, "check-config"]) == 0
    out, err = capsys.readouterr()
    writable = [] if not mode & 0o022 else [
        f"{path}: warning: can be changed by {who}, and the commands it names run as root:"
        f" chown root:root {path} && chmod go-w {path}"
    ]  # fmt: skip
    assert err.splitlines() == [
        *writable,
        f"{path}: repositories.local.password: warning: the password is in a file {who} can"
        f" read or change: chown root:root {path} && chmod 0600 {path}, or move it to"
        " password_file or password_credential",
    ]
    assert "pictures" in out and "not-shown" not in out + err


def test_keys_and_tokens_written_in_a_config_others_may_read_are_one_warning_each(
    config, capsys, monkeypatch
):
    monkeypatch.setenv("HENBACKUP_TEST_KEY", "from-the-unit")
    keys = (
        'env = { AWS_SECRET_ACCESS_KEY = "s3cr3t-key",'
        ' AWS_ACCESS_KEY_ID = "${HENBACKUP_TEST_KEY}" }\n'
    )
    hook = (
        '[[backups.pictures.hooks.after]]\ntype = "http"\nurl = "https://h/x"\n'
        'headers = { Authorization = "Bearer t0ken", Accept = "text/plain" }\n'
    )
    text = VALID.replace('password = "not-shown"\n', f'password_command = "cat /x"\n{keys}')
    path = config(text + hook)
    os.chmod(path, 0o644)
    assert main(["--config", path, "check-config"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"{path}: repositories.local.env: warning: AWS_SECRET_ACCESS_KEY written in a file"
        f" everyone (mode 0644) can read: chmod 0600 {path}, or bring it in as ${{NAME}} from"
        " the unit's environment (or env_file, env_credentials)",
        f"{path}: backups.pictures.hooks.after[0].headers: warning: Authorization written in a"
        f" file everyone (mode 0644) can read: chmod 0600 {path}, or bring it in as ${{NAME}}"
        " from the unit's environment",
    ]
    assert "s3cr3t" not in err and "t0ken" not in err


def test_a_password_from_the_environment_is_not_in_the_file(config, capsys, monkeypatch):
    monkeypatch.setenv("HENBACKUP_TEST_PASSWORD", "not-shown")
    path = config(VALID.replace('"not-shown"', '"${HENBACKUP_TEST_PASSWORD}"'))
    os.chmod(path, 0o644)
    assert main(["--config", path, "check-config"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("owner", "group", "mode", "who"),
    [
        (0, 0, 0o600, None),
        (0, 0, 0o640, None),  # group root: root's
        (0, USERS, 0o640, "group users (mode 0640)"),
        (0, USERS, 0o620, "group users (mode 0620)"),
        (0, 0, 0o604, "everyone (mode 0604)"),
        (4321, 0, 0o600, "its owner uid 4321"),
    ],
)
def test_a_password_file_others_may_read_or_change_is_one_warning(
    config, capsys, tmp_path, owner, group, mode, who
):
    secret = tmp_path / "secret"
    secret.write_text("not-shown\n")
    os.chown(secret, owner, group)
    secret.chmod(mode)
    path = config(WITH_FILE.format(secret=secret))
    assert main(["--config", path, "check-config"]) == 0
    expected = [] if who is None else [
        f"{path}: repositories.local.password_file: warning: {secret} can be read or changed"
        f" by {who}: chown root:root {secret} && chmod 0600 {secret}"
    ]  # fmt: skip
    assert capsys.readouterr().err.splitlines() == expected


def test_a_credential_is_checked_by_the_service_not_by_check_config(config, capsys, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = config(VALID.replace('password = "not-shown"', 'password_credential = "local"'))
    assert main(["--config", path, "check-config"]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"{path}: repositories.local.password_credential: note: CREDENTIALS_DIRECTORY is not"
        " set here: the credential is checked when the service starts (LoadCredential= or"
        " LoadCredentialEncrypted= in its unit)\n"
    )
    assert "pictures" in out


def test_provider_keys_from_a_credential_are_checked_by_the_service(config, capsys, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    keys = 'env = { AWS_SHARED_CREDENTIALS_FILE = "${CREDENTIALS_DIRECTORY}/aws" }\n'
    password = 'password_command = "cat /nowhere"\n'
    path = config(VALID.replace('password = "not-shown"\n', password + keys))
    assert main(["--config", path, "check-config"]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"{path}: repositories.local.env.AWS_SHARED_CREDENTIALS_FILE: note: CREDENTIALS_DIRECTORY"
        " is not set here: the credential is checked when the service starts (LoadCredential="
        " or LoadCredentialEncrypted= in its unit)\n"
    )
    assert "pictures" in out


def test_the_service_itself_needs_its_credentials(config, monkeypatch):
    """Only check-config defers them: the daemon without CREDENTIALS_DIRECTORY refuses."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = config(VALID.replace('password = "not-shown"', 'password_credential = "local"'))
    with pytest.raises(ConfigError) as raised:
        load_config(Path(path))
    assert [p.key for p in raised.value.problems] == ["repositories.local.password_credential"]


def test_a_reader_that_left_costs_no_traceback() -> None:
    """`henbackup schema | head -1`: the pipe's reader is gone before the writer ends."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "henbackup.cli.daemon", "schema"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (1, "")


@pytest.mark.parametrize("sink", ["json", "text", "journal"])
def test_events_reaches_the_forked_processes_through_the_environment(monkeypatch, capsys, sink):
    monkeypatch.setenv("HENBACKUP_EVENTS", "xml")  # the option wins over a bad variable
    assert main(["--events", sink, "schema"]) == 0
    assert os.environ["HENBACKUP_EVENTS"] == sink


def test_events_takes_only_the_three_sinks(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["--events", "stderr", "schema"])
    assert ended.value.code == 2
    assert "--events: invalid choice: 'stderr' (choose from " in capsys.readouterr().err


def test_check_config_warns_of_paths_the_service_sees_as_its_own_empty_tmp(config, capsys):
    """The unit's PrivateTmp= gives the daemon its own /tmp and /var/tmp: a backup of them
    backs up nothing of the host's."""
    text = VALID.replace(
        'paths = ["/home/me/Pictures"]', 'paths = ["/srv", "/var/tmp/keep", "/tmpx"]'
    )
    assert text != VALID
    path = config(text)
    assert main(["--config", path, "check-config"]) == 0
    assert capsys.readouterr().err == (
        f"{path}: backups.pictures.paths[1]: warning: /var/tmp/keep is in the service's own"
        " /var/tmp (PrivateTmp= of its unit), empty, not the host's: move the data, or set"
        " PrivateTmp=no in a drop-in (systemctl edit henbackup)\n"
    )
