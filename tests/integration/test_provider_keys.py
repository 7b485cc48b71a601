"""Provider keys from an env_file and from systemd credentials reach restic, and only restic.

A real daemon backs up (throttled, so that restic runs a while) to a local repository whose
env_file and env_credentials carry two keys; /proc/PID/environ of the master, the worker,
the job process and restic shows each key in restic's environment only. Events and restic's
command line never hold them. A malformed env_file fails the job with the file and the line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from daemon_helpers import PASSWORD, Daemon, make_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ONE_RESTIC = pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)
FILE_KEY = "from-the-env-file-" + os.urandom(8).hex()
CREDENTIAL_KEY = "from-a-credential-" + os.urandom(8).hex()


def write_config(tmp_path: Path, restic: str, repository: Path, data: Path, env_file: Path) -> Path:
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    password.chmod(0o600)
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"[daemon]\nrestic = {json.dumps(restic)}\n\n"
        f"[repositories.local]\nlocation = {json.dumps(str(repository))}\n"
        f"password_file = {json.dumps(str(password))}\n"
        f"env_file = {json.dumps(str(env_file))}\n"
        'env_credentials = { HENBACKUP_TEST_SECRET = "test-secret" }\n\n'
        f"[backups.pictures]\npaths = [{json.dumps(str(data))}]\n"
        'repositories = ["local"]\nschedule = ["1d"]\nupload_limit = "100K"\n'
    )
    config.chmod(0o600)
    return config


def environ(process: psutil.Process) -> bytes:
    return Path(f"/proc/{process.pid}/environ").read_bytes()


def wait_restic_backup(daemon: Daemon) -> psutil.Process:
    """The `restic backup` among the daemon's descendants, once it runs."""
    found: list[psutil.Process] = []

    def running() -> bool:
        for child in psutil.Process(daemon.pid).children(recursive=True):
            try:
                if child.name() == "restic" and "backup" in child.cmdline():
                    found.append(child)
                    return True
            except psutil.Error:
                continue
        return False

    assert daemon.pump_until(running, 60), daemon.report()
    return found[0]


@ONE_RESTIC
def test_keys_are_in_restics_environment_only(restic, repository, tmp_path):
    data = make_data(tmp_path / "pictures", big=4 * 1024 * 1024)  # 40 s at 100K/s
    env_file = tmp_path / "keys.env"
    env_file.write_text(f"# test keys\nHENBACKUP_TEST_KEY={FILE_KEY}\n")
    env_file.chmod(0o600)
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "test-secret").write_text(f"{CREDENTIAL_KEY}\n")
    config = write_config(tmp_path, restic, repository, data, env_file)
    daemon = Daemon(config, tmp_path, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    with daemon:
        daemon.wait_for("job.started", operation="backup", timeout=60)
        restic_process = wait_restic_backup(daemon)
        job = restic_process.parent()
        worker = job.parent()
        assert worker.ppid() == daemon.pid
        keys = (FILE_KEY.encode(), CREDENTIAL_KEY.encode())
        restic_env = environ(restic_process).split(b"\0")
        assert f"HENBACKUP_TEST_KEY={FILE_KEY}".encode() in restic_env
        assert f"HENBACKUP_TEST_SECRET={CREDENTIAL_KEY}".encode() in restic_env
        for other in (psutil.Process(daemon.pid), worker, job):
            assert not any(key in environ(other) for key in keys), other
        argv = "\0".join(restic_process.cmdline())
        assert FILE_KEY not in argv and CREDENTIAL_KEY not in argv
    everything = json.dumps(daemon.events) + "\n".join(daemon.noise)
    assert FILE_KEY not in everything and CREDENTIAL_KEY not in everything


@ONE_RESTIC
def test_a_malformed_env_file_fails_the_job_naming_file_and_line(restic, repository, tmp_path):
    data = make_data(tmp_path / "pictures")
    env_file = tmp_path / "keys.env"
    env_file.write_text(f"HENBACKUP_TEST_KEY=ok\nHENBACKUP_TEST_OTHER {FILE_KEY}\n")
    env_file.chmod(0o600)
    config = write_config(tmp_path, restic, repository, data, env_file)
    config.write_text(config.read_text().replace("env_credentials", "# env_credentials"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "henbackup.cli.daemon",
            "--config",
            str(config),
            "backup",
            "pictures",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HENBACKUP_EVENTS": "json"},
    )
    assert done.returncode == 1, done
    assert done.stdout == (
        f"pictures → local: FAILED: {env_file}: line 2 is not KEY=value (a variable name of"
        " letters, digits and _, then =): fix or remove it\n"
    )
    failed = [json.loads(line) for line in done.stderr.splitlines() if "job.failed" in line]
    assert [event["HENBACKUP_ERROR"] for event in failed] == [
        done.stdout.split("FAILED: ")[1].strip()
    ]
    assert FILE_KEY not in done.stdout + done.stderr
