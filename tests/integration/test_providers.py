"""Every provider against a real server on 127.0.0.1, through henbackup, on both restic
versions: S3 (moto's server, signatures checked), restic's REST protocol (`rclone serve
restic` with a user and password), SFTP (an sshd of the test's own) and rclone as a backend
(an sftp remote of that sshd, in an rclone config file of the test's own).

Each provider runs one story: `henbackup backup` twice (it creates the repository, then
forgets by the retention, keep_last = 1), then, through the daemon, `henbackupctl
list-snapshots`, `check` and `restore-snapshot` (compared byte for byte and mode for mode),
and `henbackup backup` with wrong credentials, which fails with one exact line that names
the repository and what to check, and holds no secret.

Provider keys reach restic through the repository's `env` (and `options` for ssh).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ctl_helpers import ctl, make_tree, reply, restored, said, tree_state
from daemon_helpers import Daemon
from integration.backends import (  # noqa: F401 (fixtures)
    RestServer,
    S3Server,
    SshServer,
    keygen,
    s3_server,
    ssh_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "providers: the repositories' Zq9# password"
HOST = "testhost"
REST_USER, REST_PASSWORD = "henbackup", "rest-Pa55word-of-the-TESTS"
TIMEOUT = 240  # one henbackup command (restic 0.18 retries a refused S3 key a few times)


@dataclass(frozen=True)
class Repository:
    """A repository as henbackup.toml says it: where, and the keys that reach restic."""

    location: str
    env: dict[str, str] = field(default_factory=dict)
    options: tuple[str, ...] = ()


def toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return json.dumps(value)


def write_config(
    base: Path, restic: str, data: Path, good: Repository, wrong: dict[str, Repository]
) -> Path:
    """`pictures` backs `data` up to `store` (keep_last = 1); backup `refused-NAME` backs it
    up to repository NAME of `wrong`."""
    repositories = {"store": good, **wrong}
    backups: dict[str, dict[str, object]] = {
        "pictures": {
            "paths": [str(data)],
            "repositories": ["store"],
            "retention": {"keep_last": 1},
        }
    }
    for name in wrong:
        backups[f"refused-{name}"] = {"paths": [str(data)], "repositories": [name]}
    lines = ["[daemon]", f"restic = {toml(restic)}", f"hostname = {toml(HOST)}"]
    for name, repository in repositories.items():
        lines += ["", f"[repositories.{name}]", f"location = {toml(repository.location)}"]
        lines.append(f"password = {toml(PASSWORD)}")
        if repository.env:
            lines.append(f"env = {toml(repository.env)}")
        if repository.options:
            lines.append(f"options = {toml(repository.options)}")
    for name, settings in backups.items():
        lines += ["", f"[backups.{name}]", *(f"{k} = {toml(v)}" for k, v in settings.items())]
    config = base / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def one_shot(config: Path, base: Path, backup: str) -> subprocess.CompletedProcess[str]:
    """`henbackup --config CONFIG backup BACKUP`, events as JSON lines on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HENBACKUP_", "AWS_"))}
    env.update(
        HENBACKUP_EVENTS="stderr",
        STATE_DIRECTORY=str(base / "state"),
        CACHE_DIRECTORY=str(base / "cache"),
        RUNTIME_DIRECTORY=str(base / "run"),
    )
    command = [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(config)]
    return subprocess.run(
        [*command, "backup", backup],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def events(call: subprocess.CompletedProcess[str], kind: str, **fields: str) -> list[Any]:
    found = []
    for line in call.stderr.splitlines():
        with_fields = json.loads(line) if line.startswith("{") else {}
        if with_fields.get("HENBACKUP_EVENT") != kind:
            continue
        if all(with_fields.get(f"HENBACKUP_{k.upper()}") == v for k, v in fields.items()):
            found.append(with_fields)
    return found


def snapshot_of(call: subprocess.CompletedProcess[str]) -> str:
    assert call.returncode == 0, f"exit {call.returncode}:\n{call.stdout}{call.stderr}"
    # restic 0.14's summary has the short id, 0.18's the full one
    said = re.fullmatch(r"pictures → store: snapshot ([0-9a-f]{8}|[0-9a-f]{64})\n", call.stdout)
    assert said, call.stdout
    return said[1]


def provider_story(
    tmp_path: Path,
    restic: str,
    good: Repository,
    refusals: dict[str, tuple[Repository, str]],
    secrets: tuple[str, ...],
) -> None:
    """The story of the module docstring. `refusals`: for each wrong repository, its
    definition and a regular expression its one-line reason must match in full. No string
    of `secrets` may appear in anything henbackup said (outputs, events)."""
    data = make_tree(tmp_path / "pictures")
    wrong = {name: repository for name, (repository, _) in refusals.items()}
    config = write_config(tmp_path, restic, data, good, wrong)
    base = tmp_path / "one-shot"

    first_call = one_shot(config, base, "pictures")
    first = snapshot_of(first_call)
    (data / "notes.txt").write_text("third line, after the first backup\n")
    second_call = one_shot(config, base, "pictures")
    second = snapshot_of(second_call)
    said_anywhere = [first_call.stdout, first_call.stderr, second_call.stdout, second_call.stderr]
    assert second != first
    (forgotten,) = events(second_call, "job.succeeded", operation="forget", repository="store")
    assert forgotten["MESSAGE"].endswith("kept 1, removed 1"), forgotten

    daemon = Daemon(config, tmp_path / "daemon")
    with daemon:
        daemon.wait_for("daemon.started")
        listed = ctl(daemon, "--json", "list-snapshots", "store")
        assert listed.returncode == 0, said(listed)
        (kept,) = reply(listed)["snapshots"]
        assert kept["id"].startswith(second), kept

        check = ctl(daemon, "check", "store")
        assert check.returncode == 0, said(check)

        target = tmp_path / "restored"
        restore = ctl(daemon, "restore-snapshot", "store", second, "--target", str(target))
        assert restore.returncode == 0, said(restore)
        assert tree_state(restored(target, data)) == tree_state(data)
        said_anywhere += [listed.stdout, check.stdout, restore.stdout, restore.stderr]
    said_anywhere += [json.dumps(daemon.events), *daemon.noise]

    for name, (_, reason) in refusals.items():
        call = one_shot(config, base, f"refused-{name}")
        assert call.returncode == 1, f"{call.stdout}{call.stderr}"
        match = re.fullmatch(rf"refused-{name} → {name}: FAILED: (.*)\n", call.stdout)
        assert match, call.stdout + call.stderr
        assert re.fullmatch(reason, match[1]), match[1]
        (failed,) = events(call, "job.failed", repository=name, operation="backup")
        assert failed["HENBACKUP_ERROR"] == match[1]
        said_anywhere += [call.stdout, call.stderr]
    for secret in secrets:
        assert not [text for text in said_anywhere if secret in text], secret


# --- S3 ------------------------------------------------------------------------------------

S3_ADVICE = "check its AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def test_s3(restic: str, tmp_path: Path, s3_server: S3Server) -> None:  # noqa: F811
    prefix = tmp_path.name
    keys = s3_server.env
    unknown = {**keys, "AWS_ACCESS_KEY_ID": "AKIAHENBACKUPUNKNOWN"}
    wrong_secret = {**keys, "AWS_SECRET_ACCESS_KEY": "wrong/secret/of/the/henbackup/tests"}
    provider_story(
        tmp_path,
        restic,
        Repository(s3_server.location(prefix), keys),
        {
            "unknown-key": (
                Repository(s3_server.location(prefix), unknown),
                re.escape(
                    "repository unknown-key refused access (The AWS Access Key Id you "
                    f"provided does not exist in our records.): {S3_ADVICE}"
                ),
            ),
            "wrong-secret": (
                Repository(s3_server.location(prefix), wrong_secret),
                re.escape(
                    "repository wrong-secret refused access (The request signature we "
                    "calculated does not match the signature you provided. Check your key "
                    f"and signing method.): {S3_ADVICE}"
                ),
            ),
        },
        secrets=(keys["AWS_SECRET_ACCESS_KEY"], wrong_secret["AWS_SECRET_ACCESS_KEY"]),
    )


# --- REST ----------------------------------------------------------------------------------


@pytest.fixture
def rest_server(tmp_path: Path) -> Iterator[RestServer]:
    """`rclone serve restic` on an empty directory, for REST_USER and REST_PASSWORD only."""
    directory = tmp_path / "rest-root"
    directory.mkdir()
    server = RestServer(directory, tmp_path / "rclone.log", REST_USER, REST_PASSWORD).start()
    try:
        yield server
    finally:
        server.kill()


def test_rest(restic: str, tmp_path: Path, rest_server: RestServer) -> None:
    wrong_password = "not-the-REST-password-1234"
    provider_story(
        tmp_path,
        restic,
        Repository(rest_server.location),
        {
            "wrong-password": (
                Repository(rest_server.location_as(REST_USER, wrong_password)),
                re.escape(
                    "repository wrong-password refused access (401 Unauthorized): check the "
                    "user and password in its location"
                ),
            ),
        },
        secrets=(REST_PASSWORD, wrong_password),
    )


# --- SFTP ----------------------------------------------------------------------------------

SFTP_ADVICE = "check the user and key its ssh logs in with (option sftp.command or ~/.ssh/config)"
HOST_KEY_ADVICE = "make sure it is the right server, then update known_hosts"
# restic (0.14 and 0.18 alike) may exit before it forwards what ssh said on its stderr:
# then only restic's own line is left (seen about once in five runs).
SSH_SILENT = (
    r"repository {name} is unreachable: ssh opened no SFTP session: check that the server is "
    r"up and accepts the user, key and host key its ssh uses \(unable to start the sftp "
    r"session, error: .*\)"
)


def test_sftp(restic: str, tmp_path: Path, ssh_server: SshServer) -> None:  # noqa: F811
    stranger = keygen(tmp_path / "stranger_key")
    impostor = tmp_path / "impostor_known_hosts"
    other_host = (tmp_path / "stranger_key.pub").read_text().split()[:2]
    impostor.write_text(f"[127.0.0.1]:{ssh_server.port} {' '.join(other_host)}\n")

    def through(**ssh: Path) -> Repository:
        command = f"sftp.command={ssh_server.ssh_command(**ssh)}"
        return Repository(ssh_server.location(tmp_path / "sftp-repository"), options=(command,))

    denied = re.escape(
        f"repository wrong-key refused access (Permission denied (publickey).): {SFTP_ADVICE}"
    )
    host_key = re.escape(
        "repository wrong-host: the server's host key is not one that known_hosts holds: "
        f"{HOST_KEY_ADVICE}"
    )
    denied = f"{denied}|{SSH_SILENT.format(name='wrong-key')}"
    host_key = f"{host_key}|{SSH_SILENT.format(name='wrong-host')}"
    provider_story(
        tmp_path,
        restic,
        through(),
        {
            "wrong-key": (through(key=stranger), denied),
            "wrong-host": (through(known_hosts=impostor), host_key),
        },
        secrets=(),
    )


# --- rclone as a backend -------------------------------------------------------------------

RCLONE_ADVICE = "check the remote in rclone's config file (RCLONE_CONFIG)"
# Likewise for what rclone said.
RCLONE_SILENT = (
    r"repository {name} is unreachable: rclone could not open the remote: check the remote "
    r"in rclone's config file \(RCLONE_CONFIG\) and that its server is up \(error talking "
    r"HTTP to rclone: .*\)"
)


def test_rclone(restic: str, tmp_path: Path, ssh_server: SshServer) -> None:  # noqa: F811
    stranger = keygen(tmp_path / "stranger_key")
    rclone_config = tmp_path / "rclone.conf"
    rclone_config.write_text(
        ssh_server.rclone_remote("box") + ssh_server.rclone_remote("strangers", key=stranger)
    )
    rclone_config.chmod(0o600)
    env = {"RCLONE_CONFIG": str(rclone_config)}
    path = tmp_path / "rclone-repository"
    denied = re.escape(
        "repository wrong-key refused access (unable to authenticate, attempted methods [none "
        f"publickey], no supported methods remain): {RCLONE_ADVICE}"
    )
    provider_story(
        tmp_path,
        restic,
        Repository(f"rclone:box:{path}", env),
        {
            "wrong-key": (
                Repository(f"rclone:strangers:{path}", env),
                f"{denied}|{RCLONE_SILENT.format(name='wrong-key')}",
            ),
        },
        secrets=(),
    )
