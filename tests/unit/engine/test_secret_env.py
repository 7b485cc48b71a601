"""secret_env.py: env_file and credentials read as restic starts, errors without values."""

from __future__ import annotations

import pytest

from henbackup.config.model import PasswordSource
from henbackup.engine.base import Target
from henbackup.engine.secret_env import parse_env_file, read_credential, with_secret_env
from henbackup.errors import EngineError

PASSWORD = PasswordSource("file", "/nowhere")


def test_an_env_file_is_key_value_lines_with_comments_export_and_quotes():
    text = (
        "# OVH's S3 keys\n"
        "\n"
        "AWS_ACCESS_KEY_ID=ovh-key-id\n"
        "  export AWS_SECRET_ACCESS_KEY = 'with = and # inside'  \n"
        'AWS_DEFAULT_REGION="gra"\n'
        "EMPTY=\n"
    )
    assert parse_env_file(text, "/etc/ovh.env") == {
        "AWS_ACCESS_KEY_ID": "ovh-key-id",
        "AWS_SECRET_ACCESS_KEY": "with = and # inside",
        "AWS_DEFAULT_REGION": "gra",
        "EMPTY": "",
    }


@pytest.mark.parametrize(
    "line", ["AWS_SECRET_ACCESS_KEY s3cr3t-value", "9KEY=s3cr3t-value", "KEY-X=s3cr3t-value"]
)
def test_a_malformed_line_is_one_line_naming_file_and_line_never_the_value(line):
    with pytest.raises(EngineError) as raised:
        parse_env_file(f"# keys\nAWS_ACCESS_KEY_ID=ok\n{line}\n", "/etc/ovh.env")
    assert str(raised.value) == (
        "/etc/ovh.env: line 3 is not KEY=value (a variable name of letters, digits and _,"
        " then =): fix or remove it"
    )


def test_the_target_gets_env_then_env_file_then_credentials(tmp_path):
    env_file = tmp_path / "ovh.env"
    env_file.write_text("AWS_ACCESS_KEY_ID=from-file\nAWS_DEFAULT_REGION=gra\n")
    credential = tmp_path / "ovh-secret"
    credential.write_text("from-credential\n")
    target = Target(
        "ovh",
        "s3:example/bucket",
        PASSWORD,
        env=(("AWS_ACCESS_KEY_ID", "from-env"), ("OTHER", "kept")),
        env_file=str(env_file),
        env_credentials=(("AWS_SECRET_ACCESS_KEY", str(credential)),),
    )
    resolved = with_secret_env(target)
    assert dict(resolved.env) == {
        "AWS_ACCESS_KEY_ID": "from-file",
        "OTHER": "kept",
        "AWS_DEFAULT_REGION": "gra",
        "AWS_SECRET_ACCESS_KEY": "from-credential",
    }
    assert (resolved.env_file, resolved.env_credentials) == (None, ())


def test_a_missing_env_file_or_credential_says_what_to_do(tmp_path):
    target = Target("ovh", "s3:x/y", PASSWORD, env_file=str(tmp_path / "none.env"))
    with pytest.raises(EngineError, match=r"none.env does not exist: create it \(root's"):
        with_secret_env(target)
    target = Target("ovh", "s3:x/y", PASSWORD, env_credentials=(("KEY", str(tmp_path / "k")),))
    with pytest.raises(EngineError, match="the credential k for KEY is not there: load it with"):
        with_secret_env(target)


def test_a_credential_keeps_all_but_its_final_line_break(tmp_path):
    (tmp_path / "c").write_bytes(b"line one\nline two\n\n")
    assert read_credential(str(tmp_path / "c")) == "line one\nline two\n"
