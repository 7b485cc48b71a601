"""env_file and env_credentials: declared in schema.py, checked by validate.py, and what
check-config (provider_keys.py, secrets.py) says of them."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from henbackup.cli.daemon import main
from henbackup.config.plan import describe_plan

S3 = """
[repositories.ovh]
location = "s3:s3.gra.io.cloud.ovh.net/bucket/host"
password_command = "cat /etc/henbackup/secrets/ovh"
{keys}

[backups.pictures]
paths = ["/home/me/Pictures"]
repositories = ["ovh"]
"""
ABSOLUTE = "is not an absolute path: write it from the root, /..."
CREDENTIALS = {"CREDENTIALS_DIRECTORY": "/run/credentials/henbackup.service"}


def test_env_credentials_name_files_of_the_credentials_directory(load):
    keys = 'env_credentials = { AWS_ACCESS_KEY_ID = "ovh-id", AWS_SECRET_ACCESS_KEY = "ovh-key" }'
    repository = load(S3.format(keys=keys), env=CREDENTIALS).repositories["ovh"]
    assert repository.env_credentials == (
        ("AWS_ACCESS_KEY_ID", "/run/credentials/henbackup.service/ovh-id"),
        ("AWS_SECRET_ACCESS_KEY", "/run/credentials/henbackup.service/ovh-key"),
    )
    assert (repository.file.endswith("henbackup.toml"), repository.key) == (
        True,
        "repositories.ovh",
    )


def test_bad_env_file_and_env_credentials_are_each_one_problem(problems):
    keys = (
        'env_file = "ovh.env"\n'
        'env = { AWS_ACCESS_KEY_ID = "x" }\n'
        'env_credentials = { AWS_ACCESS_KEY_ID = "a", "BAD-NAME" = "b", K = "x/y", L = 3 }'
    )
    at = "repositories.ovh.env_credentials"
    assert problems(S3.format(keys=keys), env=CREDENTIALS) == [
        ("repositories.ovh.env_file", f'"ovh.env" {ABSOLUTE}'),
        (f"{at}.BAD-NAME", "is not a valid environment variable name (letters, digits, _)"),
        (f"{at}.L", "must be a string, not an integer"),
        (f"{at}.K", "must be a credential name, as in LoadCredential=NAME:PATH (no /)"),
        (f"{at}.AWS_ACCESS_KEY_ID", "is also set in env: set each variable in one of them"),
    ]


def _check(write_config, text, capsys):
    path = write_config(text)
    path.chmod(0o600)
    code = main(["--config", str(path), "check-config"])
    out, err = capsys.readouterr()
    return code, path, out, err


def test_check_config_counts_the_env_file_names_and_never_shows_a_value(
    write_config, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    env_file = tmp_path / "ovh.env"
    env_file.write_text("AWS_ACCESS_KEY_ID=id-not-shown\nAWS_SECRET_ACCESS_KEY=key-not-shown\n")
    env_file.chmod(0o600)
    code, _, out, err = _check(write_config, S3.format(keys=f'env_file = "{env_file}"'), capsys)
    assert (code, err) == (0, "")
    assert "not-shown" not in out


def test_check_config_warns_of_each_missing_variable(write_config, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    env_file = tmp_path / "ovh.env"
    env_file.write_text("AWS_ACCESS_KEY_ID=id-not-shown\n")
    env_file.chmod(0o600)
    code, path, _, err = _check(write_config, S3.format(keys=f'env_file = "{env_file}"'), capsys)
    assert code == 0
    assert err.splitlines() == [
        f"{path}: repositories.ovh: warning: s3 (access key) needs AWS_SECRET_ACCESS_KEY: set it"
        " in env_file, env_credentials or env; or use its shared credentials file or profile of"
        " ~/.aws/credentials; an EC2 instance role needs none"
    ]


def test_check_config_counts_credentials_it_cannot_read_yet(write_config, capsys, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    keys = 'env_credentials = { B2_ACCOUNT_ID = "b2-id", B2_ACCOUNT_KEY = "b2-key" }'
    text = S3.format(keys=keys).replace("s3:s3.gra.io.cloud.ovh.net/bucket/host", "b2:bucket:h")
    code, _, _, err = _check(write_config, text, capsys)
    assert code == 0
    keys = [line.split(": ")[1] for line in err.splitlines()]
    at = "repositories.ovh.env_credentials"
    assert keys == [f"{at}.B2_ACCOUNT_ID", f"{at}.B2_ACCOUNT_KEY"]  # notes; no warning
    assert all(": note: CREDENTIALS_DIRECTORY is not set here" in line for line in err.splitlines())


def test_a_missing_env_file_warns_and_a_malformed_one_fails_check_config_naming_file_and_line(
    write_config, tmp_path, capsys
):
    # Missing, it is a warning, as a missing password_file is: the example as copied checks.
    missing = tmp_path / "none.env"
    code, path, out, err = _check(write_config, S3.format(keys=f'env_file = "{missing}"'), capsys)
    assert code == 0 and "Repository ovh" in out
    assert (
        f"{path}: repositories.ovh.env_file: warning: env_file {missing} does not exist:"
        " create it (root's, mode 0600)\n"
    ) in err
    malformed = tmp_path / "bad.env"
    malformed.write_text("AWS_ACCESS_KEY_ID=ok\nAWS_SECRET_ACCESS_KEY s3cr3t\n")
    malformed.chmod(0o600)
    code, path, out, err = _check(write_config, S3.format(keys=f'env_file = "{malformed}"'), capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"{path}: repositories.ovh.env_file: {malformed}: line 2 is not KEY=value (a variable"
        " name of letters, digits and _, then =): fix or remove it\n"
    )
    assert "s3cr3t" not in err


def test_an_env_file_others_may_read_is_one_warning_with_the_fix(write_config, tmp_path, capsys):
    env_file = tmp_path / "ovh.env"
    env_file.write_text("AWS_SHARED_CREDENTIALS_FILE=/etc/henbackup/secrets/aws\n")
    os.chmod(env_file, 0o644)
    code, path, _, err = _check(write_config, S3.format(keys=f'env_file = "{env_file}"'), capsys)
    assert code == 0
    assert err.splitlines() == [
        f"{path}: repositories.ovh.env_file: warning: {env_file} can be read or changed by"
        f" everyone (mode 0644): chown root:root {env_file} && chmod 0600 {env_file}"
    ]


def test_the_plan_names_each_credential_file_never_a_value(load):
    keys = 'env_credentials = { AWS_ACCESS_KEY_ID = "ovh-id" }'
    config = load(S3.format(keys=keys), env=CREDENTIALS)
    plan = describe_plan(config, datetime(2024, 3, 31, tzinfo=UTC))
    credential = f"{CREDENTIALS['CREDENTIALS_DIRECTORY']}/ovh-id"
    assert f"  env_credentials AWS_ACCESS_KEY_ID from {credential}\n" in plan


def test_a_credential_the_unit_does_not_load_fails_check_config(
    write_config, tmp_path, capsys, monkeypatch
):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "b2-id").write_text("id\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    keys = 'env_credentials = { B2_ACCOUNT_ID = "b2-id", B2_ACCOUNT_KEY = "b2-key" }'
    text = S3.format(keys=keys).replace("s3:s3.gra.io.cloud.ovh.net/bucket/host", "b2:bucket:h")
    code, path, out, err = _check(write_config, text, capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"{path}: repositories.ovh.env_credentials.B2_ACCOUNT_KEY: the credential b2-key is not"
        " loaded: add LoadCredential=b2-key:PATH to henbackup.service (a drop-in)\n"
    )


LOCAL = """
[repositories.nas]
location = "/srv/restic"
{password}

[backups.pictures]
paths = ["/home/me/Pictures"]
repositories = ["nas"]
"""


def test_a_password_that_cannot_be_found_is_said_before_every_job_fails_on_it(
    write_config, tmp_path, capsys, monkeypatch
):
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    missing = tmp_path / "missing"
    cases = {
        f'password_file = "{missing}"': f"warning: {missing} does not exist: create it"
        " (root's, mode 0600)",
        f'password_file = "{empty}"': f"warning: {empty} is empty: write the password in it"
        " (restic refuses none)",
        'password_command = "/nowhere/pass show nas"': "warning: its program /nowhere/pass"
        " is not found: install it or fix the path",
    }
    for password, message in cases.items():
        code, path, _, err = _check(write_config, LOCAL.format(password=password), capsys)
        key = password.split(" =")[0]
        assert (code, err) == (0, f"{path}: repositories.nas.{key}: {message}\n")

    code, path, out, err = _check(
        write_config, LOCAL.format(password=f'password_file = "{tmp_path}"'), capsys
    )
    assert (code, out) == (1, "")
    not_a_file = f"{tmp_path} is not a file: name the password's file"
    assert err == f"{path}: repositories.nas.password_file: {not_a_file}\n"

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    text = LOCAL.format(password='password_credential = "nas"')
    code, path, out, err = _check(write_config, text, capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"{path}: repositories.nas.password_credential: the credential nas is not loaded:"
        " add LoadCredential=nas:PATH to henbackup.service (a drop-in)\n"
    )
