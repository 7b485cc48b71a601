"""restic_backends.py: the variables each cloud backend of restic needs, and what is missing."""

from __future__ import annotations

import pytest

from henbackup.engine.restic_backends import missing_variables

S3_OTHERS = (
    "; or use its shared credentials file or profile of ~/.aws/credentials;"
    " an EC2 instance role needs none"
)


@pytest.mark.parametrize(
    ("location", "names"),
    [
        ("/srv/restic", set()),
        ("sftp:nas:/srv/restic", set()),
        ("rest:http://127.0.0.1:8000/", set()),
        ("s3:s3.amazonaws.com/b", {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}),
        ("s3:s3.amazonaws.com/b", {"AWS_SHARED_CREDENTIALS_FILE"}),
        ("swift:backups:/host", {"OS_AUTH_URL", "OS_USER_ID", "OS_PASSWORD", "OS_TENANT_ID"}),
        (
            "swift:backups:/host",
            {"OS_AUTH_URL", "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_SECRET"},
        ),
        ("swift:backups:/host", {"ST_AUTH", "ST_USER", "ST_KEY"}),
        ("b2:bucket:host", {"B2_ACCOUNT_ID", "B2_ACCOUNT_KEY"}),
        ("azure:container:/host", {"AZURE_ACCOUNT_NAME", "AZURE_ACCOUNT_SAS"}),
        ("gs:bucket:/host", {"GOOGLE_PROJECT_ID", "GOOGLE_APPLICATION_CREDENTIALS"}),
        ("gs:bucket:/host", {"GOOGLE_ACCESS_TOKEN"}),
    ],
)
def test_a_complete_way_or_a_backend_without_keys_needs_nothing(location, names):
    assert missing_variables(location, names) == []


def test_nothing_set_lists_the_usual_way_one_line_each():
    assert missing_variables("s3:s3.amazonaws.com/b", set()) == [
        f"s3 (access key) needs AWS_ACCESS_KEY_ID: set it in env_file, env_credentials or env"
        f"{S3_OTHERS}",
        f"s3 (access key) needs AWS_SECRET_ACCESS_KEY: set it in env_file, env_credentials or"
        f" env{S3_OTHERS}",
    ]


def test_the_way_closest_to_complete_says_what_it_lacks():
    names = {"OS_AUTH_URL", "OS_APPLICATION_CREDENTIAL_ID"}
    assert missing_variables("swift:backups:/host", names) == [
        "swift (Keystone v3 application credential) needs OS_APPLICATION_CREDENTIAL_SECRET:"
        " set it in env_file, env_credentials or env; or use its Keystone v2/v3 password or"
        " Keystone v1 or token"
    ]
    names = {"OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD"}
    assert missing_variables("swift:backups:/host", names) == [
        "swift (Keystone v2/v3 password) needs OS_PROJECT_NAME or OS_TENANT_NAME or OS_TENANT_ID:"
        " set it in env_file, env_credentials or env; or use its Keystone v3 application"
        " credential or Keystone v1 or token"
    ]


@pytest.mark.parametrize(
    ("location", "names", "needs"),
    [
        ("b2:bucket:host", {"B2_ACCOUNT_ID"}, ["B2_ACCOUNT_KEY"]),
        ("azure:c:/h", {"AZURE_ACCOUNT_NAME"}, ["AZURE_ACCOUNT_KEY or AZURE_ACCOUNT_SAS"]),
        ("gs:bucket:/h", {"GOOGLE_APPLICATION_CREDENTIALS"}, ["GOOGLE_PROJECT_ID"]),
    ],
)
def test_each_cloud_scheme_names_what_it_lacks(location, names, needs):
    lines = missing_variables(location, names)
    assert [line.split(" needs ")[1].split(":")[0] for line in lines] == needs
