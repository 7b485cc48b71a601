"""restic's stderr and failures: the typed error, one useful line, no secret.
Every restic output below was captured from real runs of restic 0.14.0 (Debian 12) and
0.18.0 (Debian 13) on this project's machine; only the comments were added.
"""

from __future__ import annotations

import pytest

from henbackup.engine.restic import (
    Features,
    classify_failure,
    explanation,
    fatal_reason,
    retry_cause,
    secrets_of,
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

from .samples import REST_LOCATION, V014, V018, target

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
    # 0.14: a folder it may not open is an error of no field; a name stays on one line
    folder = '{"message_type":"error","error":{},"during":"archival","item":"/srv/a\\nb"}'
    assert stderr_messages(folder) == ["/srv/a b: could not be read"]


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
