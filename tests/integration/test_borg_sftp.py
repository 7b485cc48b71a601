"""The daemon's stories on a borg repository over SSH, end to end, through an sshd of the
test's own (integration/backends.py: its own host key, key login, its own known_hosts):
borg runs `borg serve` there from the server's PATH, and ssh as the repository's env says
(BORG_RSH: key, port, known_hosts), as restic's sftp.command says it for restic.

A watched change is backed up to `ssh://` (the repository made on first use), a backup
asked by henbackupctl follows, each between its hooks, both are listed, one is restored
byte for byte and checked; the metrics count them. Beside a scheduled backup that
succeeds, a wrong key and an unknown host key each fail a backup with one line that says
which, the same line in its job.failed event and in `henbackupctl status`, and the
metrics count the failures."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import ctl_schemas
import pytest
from ctl_helpers import (
    HOST,
    PASSWORD,
    ctl,
    free_port,
    get_metrics,
    make_tree,
    parse_metrics,
    reply,
    restored,
    said,
    status_row,
    toml,
    tree_state,
    value,
)
from daemon_helpers import Daemon, write_state
from integration.backends import SshServer, keygen, ssh_server  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BORG = shutil.which("borg") or "borg"
DAY = 24 * 3600
ADVICE = "check the user and key its ssh logs in with (BORG_RSH in its env, or ~/.ssh/config)"
HOST_KEY = (
    "the server's host key is not one that known_hosts holds: make sure it is the right"
    " server, then update known_hosts"
)
# borg may end before it forwards what ssh said (its select loop sees ssh's stdout close
# before its stderr; most runs in a row, at times): then only its own line is left, and
# what it means.
CLOSED = (
    "repository {name} is unreachable: ssh opened no borg session: check that the server is"
    " up, has borg on its PATH and accepts the user, key and host key its ssh uses"
    " (Connection closed by remote host. Is borg working on the server?)"
)


def repository(name: str, location: str, rsh: str) -> str:
    return f"""
[repositories.{name}]
engine = "borg"
location = {toml(location)}
password = {toml(PASSWORD)}
env = {{ BORG_RSH = {toml(rsh)} }}
"""


def config(base: Path, data: Path, server: SshServer, metrics_port: int) -> Path:
    """`pictures` watched and backed up to `vault` over ssh; `wrong-key` and `wrong-host`
    are the same server through a key it refuses and a known_hosts of another host."""
    stranger = keygen(base / "stranger_key")
    impostor = base / "impostor_known_hosts"
    other_host = (base / "stranger_key.pub").read_text().split()[:2]
    impostor.write_text(f"[127.0.0.1]:{server.port} {' '.join(other_host)}\n")
    where = server.borg_location(base / "remote" / "vault")
    text = f"""
[daemon]
borg = {toml(BORG)}
hostname = {toml(HOST)}

[metrics]
listen = "127.0.0.1:{metrics_port}"
{repository("vault", where, server.borg_rsh())}
{repository("wrong-key", where, server.borg_rsh(key=stranger))}
{repository("wrong-host", where, server.borg_rsh(known_hosts=impostor))}
[backups.pictures]
paths = [{toml(str(data))}]
repositories = ["vault"]
schedule = ["1d"]
watch = {{ wait_min = "1s", wait_max = "4s" }}
retention = {{ keep_last = 5 }}

[[backups.pictures.hooks.before]]
type = "command"
command = ["sh", "-c", "echo before >> {base / "hooks.log"}"]

[[backups.pictures.hooks.after]]
type = "command"
command = ["sh", "-c", "echo after >> {base / "hooks.log"}"]

[backups.refused]
paths = [{toml(str(data))}]
repositories = ["wrong-key", "wrong-host"]
"""
    path = base / "henbackup.toml"
    path.write_text(text)
    return path


def test_watched_and_asked_backups_over_ssh_restored_byte_for_byte(
    tmp_path: Path,
    ssh_server: SshServer,  # noqa: F811
) -> None:
    data = make_tree(tmp_path / "pictures")
    port = free_port()
    daemon = Daemon(config(tmp_path, data, ssh_server, port), tmp_path / "daemon")
    write_state(daemon.state, "pictures", time.time())  # nothing due: only the change counts
    with daemon:
        daemon.wait_triggers_armed("pictures")
        mark = len(daemon.events)
        (data / "new.jpg").write_bytes(os.urandom(50_000))
        watched = daemon.wait_for("job.succeeded", since=mark, operation="backup", timeout=120)
        assert (watched["HENBACKUP_TRIGGER"], watched["HENBACKUP_REPOSITORY"]) == (
            "watch",
            "vault",
        )
        assert (tmp_path / "remote" / "vault" / "config").is_file()  # made over ssh
        source = tree_state(data)

        mark = len(daemon.events)
        (data / "notes.txt").write_text("after the watched backup\n")
        asked = ctl(daemon, "backup", "pictures")
        assert asked.returncode == 0, said(asked)
        second = daemon.wait_for("job.succeeded", since=mark, operation="backup", timeout=120)
        assert second["HENBACKUP_TRIGGER"] == "manual"

        listed = ctl(daemon, "--json", "list-snapshots", "vault")
        assert listed.returncode == 0, said(listed)
        answer = reply(listed)
        ctl_schemas.validate(answer, ctl_schemas.LIST_SNAPSHOTS)
        rows = answer["snapshots"]
        assert [row["id"] for row in rows] == [  # newest first
            second["HENBACKUP_SNAPSHOT"],
            watched["HENBACKUP_SNAPSHOT"],
        ]
        assert {(row["backup"], row["host"]) for row in rows} == {("pictures", HOST)}

        target = tmp_path / "restored"
        got = ctl(daemon, "restore-snapshot", "vault", rows[1]["short_id"], "--target", str(target))
        assert (got.returncode, got.stderr) == (0, ""), said(got)
        assert tree_state(restored(target, data)) == source  # the watched one, not the later

        check = ctl(daemon, "check", "vault")
        assert check.returncode == 0, said(check)

        daemon.wait_for("hook.succeeded", since=mark, timeout=30, hook="after")
        assert (tmp_path / "hooks.log").read_text() == "before\nafter\n" * 2
        samples, _ = parse_metrics(get_metrics(port))
        ours = {"backup": "pictures", "repository": "vault"}
        assert value(samples, "henbackup_snapshots", **ours) == 2
        assert value(samples, "henbackup_last_run_success", **ours, operation="backup") == 1
        runs = value(
            samples, "henbackup_runs_total", **ours, operation="backup", result="succeeded"
        )
        assert runs == 2
        assert (value(samples, "henbackup_bytes_added_total", **ours) or 0) > 50_000
    said_anywhere = [json.dumps(daemon.events), *daemon.noise, listed.stdout, got.stdout]
    assert not [text for text in said_anywhere if PASSWORD in text]


def test_a_wrong_key_or_host_key_fails_in_one_line_beside_a_scheduled_backup(
    tmp_path: Path,
    ssh_server: SshServer,  # noqa: F811
) -> None:
    data = make_tree(tmp_path / "pictures")
    port = free_port()
    daemon = Daemon(config(tmp_path, data, ssh_server, port), tmp_path / "daemon")
    expected = {
        "wrong-key": re.escape(
            f"repository wrong-key refused access (Permission denied (publickey).): {ADVICE}"
        ),
        "wrong-host": re.escape(f"repository wrong-host: {HOST_KEY}"),
    }
    # `pictures` falls due by its schedule a few seconds in (late enough that a slow start
    # still finds it not yet due), while `refused` runs.
    write_state(daemon.state, "pictures", time.time() + 8 - DAY)
    with daemon:
        daemon.wait_for("daemon.started")
        asked = ctl(daemon, "backup", "refused")  # waits for both, and says each failed
        assert asked.returncode == 1, said(asked)
        scheduled = daemon.wait_for("job.succeeded", operation="backup", timeout=120)
        assert (scheduled["HENBACKUP_TRIGGER"], scheduled["HENBACKUP_REPOSITORY"]) == (
            "schedule",
            "vault",
        )
        for name, reason in expected.items():
            failed = daemon.wait_for("job.failed", repository=name, operation="backup", timeout=120)
            error = failed["HENBACKUP_ERROR"]
            assert re.fullmatch(f"{reason}|{re.escape(CLOSED.format(name=name))}", error), error
        status = reply(ctl(daemon, "--json", "status"))
        ctl_schemas.validate(status, ctl_schemas.STATUS)
        for name in expected:
            row = status_row(status, "refused", name)
            (failed,) = daemon.find("job.failed", repository=name)
            assert (row["result"], row["error"]) == ("failed", failed["HENBACKUP_ERROR"])
        samples, _ = parse_metrics(get_metrics(port))
        for name in expected:
            theirs = {"backup": "refused", "repository": name, "operation": "backup"}
            assert value(samples, "henbackup_last_run_success", **theirs) == 0
            assert value(samples, "henbackup_runs_total", **theirs, result="failed") == 1
        listed = reply(ctl(daemon, "--json", "list-snapshots", "vault"))["snapshots"]
        assert [row["id"] for row in listed] == [scheduled["HENBACKUP_SNAPSHOT"]]  # theirs: none
