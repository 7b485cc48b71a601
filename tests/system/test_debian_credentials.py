"""Provider keys under the installed package and a real systemd (PID 1 of a booted Debian 12
container, debian_container.py): a drop-in's LoadCredential= feeds env_credentials, a root-
only env_file the other key, and /proc/PID/environ shows both in restic's environment only,
never the master's, its worker's or its job process's; the journal never holds them.
(The user manager of the systemd harness gives its services no credential, so this runs
where systemd is PID 1.)"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from debian_container import Container, wait_for
from test_debian_package import UNIT, package  # noqa: F401 (a fixture)

FILE_KEY = "from-the-env-file-" + os.urandom(8).hex()
CREDENTIAL_KEY = "from-a-credential-" + os.urandom(8).hex()
CONFIG = """\
[repositories.local]
location = "/srv/backup/local"
password_file = "/etc/henbackup/secrets/local"
env_file = "/etc/henbackup/secrets/local.env"
env_credentials = { HENBACKUP_TEST_CREDENTIAL = "test-key" }

[backups.big]
paths = ["/srv/big"]
repositories = ["local"]
schedule = ["1d"]
upload_limit = "64K"
"""
DROPIN = "[Service]\nLoadCredential=test-key:/etc/henbackup/secrets/test-key\n"
# Run inside the container: the environment of restic backup, of its parent (the job
# process), of that one's parent (the worker) and of the master, as JSON.
PROCESSES = """
import json, pathlib, subprocess, sys
def stat(pid): return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
def environ(pid): return pathlib.Path(f"/proc/{pid}/environ").read_bytes().decode()
main = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", sys.argv[1]],
                      capture_output=True, text=True).stdout.strip()
for proc in pathlib.Path("/proc").glob("[0-9]*"):
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\\0")
    except OSError:
        continue
    if argv[0].endswith(b"restic") and b"backup" in argv:
        job = stat(proc.name)[1]
        worker = stat(job)[1]
        pids = {"restic": proc.name, "job": job, "worker": worker, "master": main}
        print(json.dumps({"parent of worker": stat(worker)[1],
                          **{name: environ(pid) for name, pid in pids.items()}}))
        break
"""


@pytest.fixture(scope="module")
def debian(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:  # noqa: F811
    container = Container(tmp_path_factory.mktemp("debian-credentials"), package)
    try:
        container.boot()
        (container.root / "root" / package.name).write_bytes(package.read_bytes())
        container.run("apt-get", "install", "-y", f"/root/{package.name}", timeout=300)
        yield container
    finally:
        container.stop()


def secret(debian: Container, path: str, text: str) -> None:
    debian.run("sh", "-c", f"umask 077 && cat > {path}", input=text)


def test_keys_from_a_loaded_credential_and_an_env_file_reach_restic_only(debian):
    debian.run("install", "-d", "-m", "0700", "/etc/henbackup/secrets")
    secret(debian, "/etc/henbackup/secrets/local", "deb-credentials: a password")
    secret(debian, "/etc/henbackup/secrets/local.env", f"HENBACKUP_TEST_FILE={FILE_KEY}\n")
    secret(debian, "/etc/henbackup/secrets/test-key", f"{CREDENTIAL_KEY}\n")
    debian.run("install", "-d", f"/etc/systemd/system/{UNIT}.d")
    debian.run("tee", f"/etc/systemd/system/{UNIT}.d/credentials.conf", input=DROPIN)
    debian.run("mkdir", "-p", "/srv/big", "/srv/backup")
    debian.run("sh", "-c", "head -c 4194304 /dev/urandom > /srv/big/noise")  # a minute at 64K
    debian.run("tee", "/etc/henbackup/henbackup.toml", input=CONFIG)
    check = debian.run("henbackup", "check-config")  # from a shell: the credential is noted
    assert FILE_KEY not in check.stdout + check.stderr
    debian.run("systemctl", "daemon-reload")
    debian.run("systemctl", "restart", UNIT)

    def seen() -> dict[str, str] | None:
        found = debian.run("python3", "-c", PROCESSES, UNIT).stdout
        return json.loads(found) if found else None

    environments = wait_for(seen, 120, "restic backup running under the service")
    assert isinstance(environments, dict)
    variables = {name: environ.split("\0") for name, environ in environments.items()}
    assert f"HENBACKUP_TEST_FILE={FILE_KEY}" in variables["restic"]
    assert f"HENBACKUP_TEST_CREDENTIAL={CREDENTIAL_KEY}" in variables["restic"]
    for name in ("master", "worker", "job"):
        text = environments[name]
        assert FILE_KEY not in text and CREDENTIAL_KEY not in text, name
    assert (
        environments["parent of worker"]
        == debian.run("systemctl", "show", "-p", "MainPID", "--value", UNIT).stdout.strip()
    )
    debian.run("systemctl", "stop", UNIT)
    everything = debian.run("journalctl", "-o", "export", "--no-pager").stdout
    assert "HENBACKUP_EVENT=job.started" in everything
    assert FILE_KEY not in everything and CREDENTIAL_KEY not in everything
