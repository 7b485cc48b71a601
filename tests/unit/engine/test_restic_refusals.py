"""A backend that refuses the credentials: AccessRefused, one line that names the repository
and what to check, no secret; restic's retries of a refusal are ended.

Every restic output below was captured from real runs of restic 0.14.0 (Debian 12) and
0.18.0 (Debian 13) against the servers of tests/integration/backends.py (moto's S3 with
signatures checked, `rclone serve restic --user --pass`, the tests' own sshd, rclone's sftp
remote); only the comments were added, and the locations stand for what the redaction left.
"""

from __future__ import annotations

import pytest

from henbackup.engine.restic import (
    REFUSED_RETRIES,
    Features,
    classify_failure,
    refused_retries,
    scheme_of,
    stderr_messages,
)
from henbackup.errors import AccessRefused, BackendUnreachable, RepositoryMissing

from .samples import V014, V018

S3_UNKNOWN_KEY_014 = (
    "Fatal: unable to open config file: Stat: The AWS Access Key Id you provided does not "
    "exist in our records.\nIs there a repository at the following location?\n<redacted>\n"
)
S3_WRONG_SECRET_014 = (
    "Fatal: unable to open config file: Stat: The request signature we calculated does not "
    "match the signature you provided. Check your key and signing method.\nIs there a "
    "repository at the following location?\n<redacted>\n"
)
# restic 0.18 retries an unknown key for 15 minutes (here: ended by SIGTERM)
S3_UNKNOWN_KEY_RETRY_018 = (
    "Stat(<config/>) returned error, retrying after 628.58576ms: Stat: The AWS Access Key Id "
    "you provided does not exist in our records."
)
REST_401_014 = (
    "Fatal: unable to open config file: unexpected HTTP response (401): 401 Unauthorized\n"
    "Is there a repository at the following location?\n<redacted>\n"
)
REST_401_018 = (
    "Stat(<config/>) failed: unexpected HTTP response (401): 401 Unauthorized\n"
    '{"message_type":"exit_error","code":1,"message":"Fatal: unable to open config file: '
    "unexpected HTTP response (401): 401 Unauthorized\\nIs there a repository at the following "
    'location?\\n<redacted>"}\n'
)
SFTP_DENIED_014 = (
    "subprocess ssh: root@127.0.0.1: Permission denied (publickey).\n"
    "Fatal: unable to open repository at <redacted>: unable to start the sftp session, error: "
    "EOF\n"
)
SFTP_DENIED_018 = (
    "subprocess ssh: root@127.0.0.1: Permission denied (publickey).\n"
    '{"message_type":"exit_error","code":1,"message":"Fatal: unable to open repository at '
    "<redacted>: unable to start the sftp session, error: error receiving version packet from "
    'server: server unexpectedly closed connection: unexpected EOF"}\n'
)
SFTP_HOST_KEY_014 = (
    "subprocess ssh: @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
    "subprocess ssh: @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
    "subprocess ssh: @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
    "subprocess ssh: IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n"
    "subprocess ssh: Host key for [127.0.0.1]:18558 has changed and you have requested strict "
    "checking.\nsubprocess ssh: Host key verification failed.\n"
    "Fatal: unable to open repository at <redacted>: unable to start the sftp session, error: "
    "EOF\n"
)
# restic (0.14 and 0.18) may exit before it forwards what ssh said
SFTP_SILENT_014 = (
    "Fatal: unable to open repository at <redacted>: unable to start the sftp session, error: "
    "read |0: file already closed\n"
)
RCLONE_DENIED_018 = (
    'rclone: 2026/12/02 06:37:16 Failed to create file system for "<redacted>": NewFs: '
    "couldn't connect SSH: ssh: handshake failed: ssh: unable to authenticate, attempted "
    "methods [none publickey], no supported methods remain\n"
    '{"message_type":"exit_error","code":1,"message":"Fatal: unable to open repository at '
    '<redacted>: error talking HTTP to rclone: exit status 1"}\n'
)
RCLONE_HOST_KEY_014 = (
    'rclone: 2026/12/02 06:38:36 Failed to create file system for "<redacted>": NewFs: '
    "couldn't connect SSH: ssh: handshake failed: knownhosts: key mismatch\n"
    "Fatal: unable to open repository at <redacted>: error talking HTTP to rclone: Get "
    '"http://localhost/file-5577006791947779410": unexpected EOF\n'
)
RCLONE_SILENT_014 = (
    "Fatal: unable to open repository at <redacted>: error talking HTTP to rclone: Get "
    '"http://localhost/file-5577006791947779410": unexpected EOF\n'
)
# A local repository that may not be read: not a login, not refused by a server.
LOCAL_DENIED_014 = (
    "Fatal: unable to open config file: open /srv/repo/config: permission denied\n"
    "Is there a repository at the following location?\n<redacted>\n"
)

S3 = "check its AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
SSH = "check the user and key its ssh logs in with (option sftp.command or ~/.ssh/config)"
SSH_DENIED = f"repository r1 refused access (Permission denied (publickey).): {SSH}"
RCLONE = "check the remote in rclone's config file (RCLONE_CONFIG)"
HOST_KEY = (
    "repository r1: the server's host key is not one that known_hosts holds: make sure it is "
    "the right server, then update known_hosts"
)


def classify(stderr: str, features: Features, scheme: str):
    return classify_failure("snapshots", 1, stderr_messages(stderr), "r1", features, scheme)


@pytest.mark.parametrize(
    ("stderr", "features", "scheme", "reason"),
    [
        (
            S3_UNKNOWN_KEY_014, V014, "s3",
            "repository r1 refused access (The AWS Access Key Id you provided does not exist "
            f"in our records.): {S3}",
        ),
        (
            S3_WRONG_SECRET_014, V014, "s3",
            "repository r1 refused access (The request signature we calculated does not match "
            f"the signature you provided. Check your key and signing method.): {S3}",
        ),
        (
            REST_401_014, V014, "rest",
            "repository r1 refused access (401 Unauthorized): check the user and password in "
            "its location",
        ),
        (
            REST_401_018, V018, "rest",
            "repository r1 refused access (401 Unauthorized): check the user and password in "
            "its location",
        ),
        (SFTP_DENIED_014, V014, "sftp", SSH_DENIED),
        (SFTP_DENIED_018, V018, "sftp", SSH_DENIED),
        (SFTP_HOST_KEY_014, V014, "sftp", HOST_KEY),
        (
            RCLONE_DENIED_018, V018, "rclone",
            "repository r1 refused access (unable to authenticate, attempted methods [none "
            f"publickey], no supported methods remain): {RCLONE}",
        ),
        (RCLONE_HOST_KEY_014, V014, "rclone", HOST_KEY),
        (
            S3_WRONG_SECRET_014, V014, "b2",
            "repository r1 refused access (The request signature we calculated does not match "
            "the signature you provided. Check your key and signing method.): check its "
            "B2_ACCOUNT_ID and B2_ACCOUNT_KEY",
        ),
    ],
)  # fmt: skip
def test_a_refused_login_says_what_to_check(
    stderr: str, features: Features, scheme: str, reason: str
) -> None:
    error = classify(stderr, features, scheme)
    assert type(error) is AccessRefused
    assert isinstance(error, BackendUnreachable)  # no unlock is tried, as for a server down
    assert str(error) == reason


def test_when_ssh_or_rclone_said_nothing_restic_s_line_is_explained() -> None:
    sftp = classify(SFTP_SILENT_014, V014, "sftp")
    assert type(sftp) is BackendUnreachable
    assert str(sftp) == (
        "repository r1 is unreachable: ssh opened no SFTP session: check that the server is up "
        "and accepts the user, key and host key its ssh uses (unable to start the sftp "
        "session, error: read |0: file already closed)"
    )
    rclone = classify(RCLONE_SILENT_014, V014, "rclone")
    assert type(rclone) is BackendUnreachable
    assert str(rclone) == (
        "repository r1 is unreachable: rclone could not open the remote: check the remote in "
        "rclone's config file (RCLONE_CONFIG) and that its server is up (error talking HTTP to "
        'rclone: Get "http://localhost/file-5577006791947779410": unexpected EOF)'
    )


def test_a_local_permission_problem_is_no_refused_login() -> None:
    assert type(classify(LOCAL_DENIED_014, V014, "")) is RepositoryMissing


def test_refused_retries_end_after_a_few() -> None:
    retries = [S3_UNKNOWN_KEY_RETRY_018] * (REFUSED_RETRIES - 1)
    assert refused_retries(retries, "r1", "s3") is None
    transient = "Load(<data/1a2b>, 0, 0) returned error, retrying after 1s: connection reset"
    assert refused_retries([*retries, transient], "r1", "s3") is None
    error = refused_retries([*retries, transient, S3_UNKNOWN_KEY_RETRY_018], "r1", "s3")
    assert type(error) is AccessRefused
    assert str(error) == (
        "repository r1 refused access (The AWS Access Key Id you provided does not exist in "
        f"our records.): {S3}"
    )


@pytest.mark.parametrize(
    ("location", "scheme"),
    [
        ("s3:http://127.0.0.1:9000/bucket/x", "s3"),
        ("rest:http://user:pw@127.0.0.1:8000/", "rest"),
        ("sftp:user@host:/srv/repo", "sftp"),
        ("rclone:box:path", "rclone"),
        ("/srv/restic", ""),
        ("relative/path:with-colon", ""),
    ],
)
def test_scheme_of(location: str, scheme: str) -> None:
    assert scheme_of(location) == scheme
