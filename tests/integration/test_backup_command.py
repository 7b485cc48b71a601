"""`henbackup backup NAME` end to end: real restic, two repositories, one of them failing."""

import json
import os
import subprocess
import sys

PASSWORD = "good horse battery 'staple' $HOME"
OTHER = "a-different-password"


def restic_json(restic, repo, password, *args):
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": password}
    done = subprocess.run([restic, *args, "--json"], env=env, capture_output=True, check=True)
    return json.loads(done.stdout)


def test_a_failing_repository_does_not_stop_the_other(restic, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello\n")
    good, bad = tmp_path / "good", tmp_path / "bad"
    env = {**os.environ, "RESTIC_PASSWORD": OTHER, "RESTIC_REPOSITORY": str(bad)}
    subprocess.run([restic, "init"], env=env, capture_output=True, check=True)
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"""
        [daemon]
        restic = "{restic}"
        hostname = "testhost"

        [repositories.bad]
        location = "{bad}"
        password = "{PASSWORD}"

        [repositories.good]
        location = "{good}"
        password = "{PASSWORD}"

        [backups.docs]
        paths = ["{data}"]
        repositories = ["bad", "good"]
        [[backups.docs.hooks.before]]
        type = "command"
        command = ["sh", "-c", "echo $HENBACKUP_JOB > {tmp_path}/job"]
        """
    )
    done = subprocess.run(
        [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(config), "backup", "docs"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "HENBACKUP_EVENTS": "stderr",
            "CACHE_DIRECTORY": str(tmp_path / "c"),
            "STATE_DIRECTORY": str(tmp_path / "state"),  # not the host's
            "RUNTIME_DIRECTORY": str(tmp_path / "run"),
        },
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert PASSWORD not in done.stdout + done.stderr

    snapshots = restic_json(restic, good, PASSWORD, "snapshots")
    assert len(snapshots) == 1
    assert snapshots[0]["tags"] == ["backup-docs"]
    assert snapshots[0]["hostname"] == "testhost"

    events = [json.loads(line) for line in done.stderr.splitlines()]
    by_kind = {(e["HENBACKUP_EVENT"], e.get("HENBACKUP_REPOSITORY")): e for e in events}
    failed = by_kind["job.failed", "bad"]
    assert failed["HENBACKUP_BACKUP"] == "docs"
    assert failed["HENBACKUP_OPERATION"] == "backup"
    assert failed["HENBACKUP_TRIGGER"] == "manual"
    assert failed["PRIORITY"] == "3"
    assert "password" in failed["HENBACKUP_ERROR"]
    assert "\n" not in failed["HENBACKUP_ERROR"]
    succeeded = by_kind["job.succeeded", "good"]
    assert succeeded["HENBACKUP_SNAPSHOT"] in (snapshots[0]["id"], snapshots[0]["short_id"])
    assert succeeded["HENBACKUP_FILES_NEW"] == "1"
    assert succeeded["HENBACKUP_JOB"] != failed["HENBACKUP_JOB"]
    # The run's hooks know it by its first job's id, in their environment and events.
    assert (tmp_path / "job").read_text() == f"{failed['HENBACKUP_JOB']}\n"
    assert by_kind["hook.succeeded", None]["HENBACKUP_JOB"] == failed["HENBACKUP_JOB"]
    assert done.stdout.splitlines() == [
        f"docs → bad: FAILED: {failed['HENBACKUP_ERROR']}",
        f"docs → good: snapshot {succeeded['HENBACKUP_SNAPSHOT']}",
    ]


def test_a_full_disk_under_stderr_loses_the_events_not_the_backup(restic, tmp_path):
    data, repository = tmp_path / "data", tmp_path / "repository"
    data.mkdir()
    (data / "a.txt").write_text("hello\n")
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"""
        [daemon]
        restic = "{restic}"
        [repositories.local]
        location = "{repository}"
        password = "{PASSWORD}"
        [backups.docs]
        paths = ["{data}"]
        repositories = ["local"]
        """
    )
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "henbackup.cli.daemon",
                "--config",
                str(config),
                "backup",
                "docs",
            ],
            stderr=full,
            env={
                **os.environ,
                "HENBACKUP_EVENTS": "json",
                "CACHE_DIRECTORY": str(tmp_path / "c"),
                "STATE_DIRECTORY": str(tmp_path / "state"),
                "RUNTIME_DIRECTORY": str(tmp_path / "run"),
            },
            timeout=120,
        )
    assert done.returncode == 0
    snapshots = restic_json(restic, repository, PASSWORD, "snapshots")
    assert [snapshot["tags"] for snapshot in snapshots] == [["backup-docs"]]
