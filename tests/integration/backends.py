"""Real storage backends on 127.0.0.1 for the engine's fault and provider tests.

`RestServer` is restic's REST protocol served by `rclone serve restic` (Debian's rclone)
from a directory: a real HTTP server that a test can freeze (SIGSTOP), kill, and start
again on the same port. `rest_repository` gives a test one, serving an initialized
repository of its own (password daemon_helpers.PASSWORD).

`S3Server` is moto's S3 server (PyPI moto[server]) with a bucket and one user's keys, and
signatures checked: a wrong key is refused as AWS refuses it. `SshServer` is an sshd of the
test's own (Debian's openssh-server): its own host key, key authentication, SFTP, and a
known_hosts of its own for the client; restic reaches it through `sftp.command`, rclone
through an `sftp` remote (`SshServer.rclone_remote`), borg through BORG_RSH
(`SshServer.borg_rsh`).

Import it as `integration.backends` (tests/ is on sys.path through its conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.daemon_helpers import restic_command

RCLONE = shutil.which("rclone") or "rclone"
SSHD = "/usr/sbin/sshd"  # Debian's openssh-server (the Makefile's APT_PACKAGES)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_listening(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    """Until something accepts on `port`; fails with `log` if `process` died or time ran out."""
    deadline = time.monotonic() + timeout
    while not accepts(port):
        assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"nothing listens on {port}:\n{log.read_text()}"
        time.sleep(0.05)


def end(process: subprocess.Popen[bytes] | None) -> None:
    """Kill a server this module started (its own session) and reap it."""
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class RestServer:
    """`rclone serve restic` serving `directory` as the repository at the server's root;
    with `user` and `password`, only to them (HTTP basic authentication)."""

    def __init__(
        self, directory: Path, log: Path, user: str | None = None, password: str | None = None
    ) -> None:
        self.directory, self.log = directory, log
        self.user, self.password = user, password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def location(self) -> str:
        """The restic repository string (with the user and password, if any)."""
        return self.location_as(self.user, self.password)

    def location_as(self, user: str | None, password: str | None) -> str:
        login = f"{user}:{password}@" if user is not None else ""
        return f"rest:http://{login}127.0.0.1:{self.port}/"

    def start(self, after: float = 0.0, timeout: float = 30.0) -> RestServer:
        """Serve, on the same port as before; with `after`, only that many seconds from now
        (and return at once: the test goes on while the backend is away)."""
        command = [RCLONE, "serve", "restic", "--addr", f"127.0.0.1:{self.port}"]
        if self.user is not None:  # rclone reads them from argv: they are test values
            command += ["--user", self.user, "--pass", self.password or ""]
        command.append(str(self.directory))
        if after:
            command = ["sh", "-c", f'sleep {after}; exec "$@"', "sh", *command]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        if not after:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not accepts(self.port):
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"rclone did not listen:\n{self.log.read_text()}"
            time.sleep(0.05)

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted (by the kernel), nothing is answered."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Gone: connections are refused until `start`."""
        if self.process is not None:
            self._signal(signal.SIGCONT)  # a frozen one dies too
            self._signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)


# One initialized repository per restic binary for the session: `restic init` takes seconds.
_templates: dict[str, Path] = {}


@pytest.fixture
def rest_repository(
    restic: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestServer]:
    """A REST server serving a fresh initialized repository (password PASSWORD) of the
    test's own; killed at the end of the test. Import it into the test module."""
    template = _templates.get(restic)
    if template is None:
        template = tmp_path_factory.mktemp("rest-template") / "repository"
        restic_command(restic, template, "init")
        _templates[restic] = template
    directory = tmp_path / "rest-repository"
    shutil.copytree(template, directory)
    server = RestServer(directory, tmp_path / "rclone.log").start()
    try:
        yield server
    finally:
        server.kill()


class S3Server:
    """moto's S3 server on 127.0.0.1 with bucket BUCKET and one IAM user whose keys (`env`)
    may do anything on S3. Signatures are checked: once set up, the server takes only
    requests signed with a key it issued (moto's reset-auth to 0 ends its unsigned start),
    and answers a wrong key as AWS does (InvalidAccessKeyId, SignatureDoesNotMatch)."""

    BUCKET = "henbackup-tests"

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def location(self, prefix: str) -> str:
        """A repository string for `prefix` in the bucket."""
        return f"s3:{self.endpoint}/{self.BUCKET}/{prefix}"

    def start(self, timeout: float = 60.0) -> S3Server:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        wait_listening(self.process, self.port, self.log, timeout)
        self.env = self._set_up()
        return self

    def _set_up(self) -> dict[str, str]:
        import boto3  # moto's own dependency: only the provider tests need it

        unsigned = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        where = {"endpoint_url": self.endpoint, "region_name": "us-east-1", **unsigned}
        iam = boto3.client("iam", **where)
        iam.create_user(UserName="henbackup")
        allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        policy = json.dumps({"Version": "2012-10-17", "Statement": [allow]})
        iam.put_user_policy(UserName="henbackup", PolicyName="s3", PolicyDocument=policy)
        key = iam.create_access_key(UserName="henbackup")["AccessKey"]
        boto3.client("s3", **where).create_bucket(Bucket=self.BUCKET)
        auth = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",  # unsigned requests allowed from now on: none
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(auth, timeout=30) as answer:
            assert answer.status == 200, answer.read()
        return {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }

    def kill(self) -> None:
        end(self.process)
        self.process = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto S3 server for the session; each test uses a prefix of its own."""
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.kill()


def keygen(path: Path) -> Path:
    """A new ed25519 key pair without passphrase at `path` (and `path`.pub)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


class SshServer:
    """An sshd of the test's own on 127.0.0.1: its own host key, public-key login of the
    user running the tests with `client_key` only, SFTP (internal-sftp), and a known_hosts
    of its own for the client. Started as root, sshd needs its privilege separation
    directory /run/sshd (what the openssh-server unit makes at boot): made if missing."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host_key = keygen(directory / "host_key")
        self.client_key = keygen(directory / "client_key")
        authorized = directory / "authorized_keys"
        authorized.write_text((directory / "client_key.pub").read_text())
        authorized.chmod(0o600)
        host_public = (directory / "host_key.pub").read_text().split()[:2]
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_public)}\n")
        self.config = directory / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            "PidFile none\n"
            f"AuthorizedKeysFile {authorized}\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # pytest's temporary directories are not what StrictModes wants (root's alone)
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel VERBOSE\n"
        )
        self.log = directory / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> SshServer:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        command = [SSHD, "-D", "-e", "-f", str(self.config)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        wait_listening(self.process, self.port, self.log, timeout)
        return self

    def location(self, path: Path) -> str:
        """The restic repository string for directory `path` on this server."""
        return f"sftp:{self.user}@127.0.0.1:{path}"

    def ssh_command(self, key: Path | None = None, known_hosts: Path | None = None) -> str:
        """The ssh command line restic's sftp.command runs: this server, `key` (the client
        key by default), `known_hosts` (the server's own by default), no prompt, no other
        configuration of the machine or the user."""
        return " ".join(
            [
                "ssh", "-F", "/dev/null", "-p", str(self.port),
                "-i", str(key or self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null",
                f"{self.user}@127.0.0.1", "-s", "sftp",
            ]
        )  # fmt: skip

    def borg_location(self, path: Path) -> str:
        """The borg repository string for directory `path` on this server."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def borg_rsh(self, key: Path | None = None, known_hosts: Path | None = None) -> str:
        """BORG_RSH: ssh_command's ssh and options without its destination (borg adds it,
        and runs `borg serve` there, from the server's PATH)."""
        return self.ssh_command(key, known_hosts).rsplit(" ", 3)[0]

    def rclone_remote(
        self, name: str, key: Path | None = None, known_hosts: Path | None = None
    ) -> str:
        """An rclone config section: remote `name`, an sftp remote on this server."""
        return (
            f"[{name}]\ntype = sftp\nhost = 127.0.0.1\nport = {self.port}\n"
            f"user = {self.user}\nkey_file = {key or self.client_key}\n"
            f"known_hosts_file = {known_hosts or self.known_hosts}\n"
        )

    def kill(self) -> None:
        end(self.process)
        self.process = None


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One sshd for the session; each test uses a directory of its own."""
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.kill()
