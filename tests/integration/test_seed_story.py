"""The seed's story, end to end (issue 14, item 5), through the real daemon, real restic (both
versions), real inotify, real servers on 127.0.0.1: the shipped example (etc/henbackup.toml)
made small.

- pictures: on change (a watch, quiet for 5 s) and at least daily, to an S3 repository
  ("aws-ireland": moto's server, keys in a root-only env_file) and a REST one
  ("ovh-frankfort": `rclone serve restic`), throttled (upload_limit), inferior, in a cgroup
  leaf of its own (resources), with a retention;
- grafana: hourly, superior, to ovh-frankfort, after an HTTP before hook that asks a real
  HTTP server (this test's, in a thread) to dump "the database" into grafana's source
  directory;
- one slot (max_concurrent_jobs = 1), preempt_after at its default.

Grafana's schedule is the real "1h": its last success is recorded as HOUR_COMES_IN seconds
short of an hour ago (the state file the daemon keeps across restarts), so its hour comes
that long after the daemon starts, with no fake clock. A burst of a few hundred pictures
(copied in one go) lands a few seconds before that hour: the pictures run that it starts
uploads for about half a minute per repository, so Grafana's hour comes while it uploads.

What the story must show: Grafana is not stuck behind the throttled upload (it pauses
pictures, its snapshot comes first, and holds the dump its hook wrote); the burst makes one
pictures run, not one per file; both repositories hold every picture afterwards (restored
through henbackupctl, byte for byte); `henbackupctl check` is clean on both; nothing failed.
Timing is only ordered, never measured: the deadlines are generous for a busy machine.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ctl_helpers import ctl, restored, said, tree_state
from daemon_helpers import PASSWORD, Daemon, Event, when, write_state
from integration.backends import (  # noqa: F401 (fixtures)
    RestServer,
    S3Server,
    rest_repository,
    s3_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "testhost"
PICTURES, PICTURE_SIZE = 300, 8_000  # ~2.3 MiB: ~25 s per repository at UPLOAD_LIMIT
UPLOAD_LIMIT = "100K"
# Grafana's hour comes this long after the daemon starts, and the burst BURST_BEFORE ahead
# of it: pictures starts uploading about 7 s before the hour (the watch waits 5 s), so the
# daemon has some 13 s to start on a busy machine, and pictures' upload still lasts well
# past the hour and the 5 s (preempt_after) that Grafana waits before pausing it.
HOUR_COMES_IN = 25.0
BURST_BEFORE = 12.0
DEADLINE = 180.0  # for what only has to happen at last; never a measure


class DumpServer(ThreadingHTTPServer):
    """Grafana's dump API: each POST /api/dump writes a new dump (random bytes, as a
    database dump is: restic cannot find it elsewhere) into `directory`, keeps it in
    `dumps`, then answers 200."""

    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), DumpHandler)
        self.directory = directory
        self.dumps: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/dump"


class DumpHandler(BaseHTTPRequestHandler):
    server: DumpServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/api/dump":
            self.send_error(404)
            return
        dump = os.urandom(200_000)
        partial = self.server.directory / ".grafana.db.partial"
        partial.write_bytes(dump)
        partial.rename(self.server.directory / "grafana.db")  # whole or absent, as a dump is
        self.server.dumps.append(dump)
        body = b"dumped\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def dump_server(tmp_path: Path) -> Iterator[DumpServer]:
    directory = tmp_path / "grafana" / "dump"
    directory.mkdir(parents=True)
    server = DumpServer(directory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def write_config(
    tmp_path: Path, restic: str, s3: S3Server, rest: RestServer, dump: DumpServer
) -> Path:
    """etc/henbackup.toml's story, with this test's paths, servers and small durations."""
    keys = tmp_path / "aws-ireland.env"  # root's, 0600, as the example says
    keys.write_text("".join(f"{name}={value}\n" for name, value in s3.env.items()))
    keys.chmod(0o600)
    pictures = tmp_path / "pictures"
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"""
[daemon]
restic = {json.dumps(restic)}
hostname = "{HOST}"
max_concurrent_jobs = 1

[repositories.aws-ireland]
location = {json.dumps(s3.location(tmp_path.name))}
password = {json.dumps(PASSWORD)}
env_file = {json.dumps(str(keys))}

[repositories.ovh-frankfort]
location = {json.dumps(rest.location)}
password = {json.dumps(PASSWORD)}

[backups.pictures]
paths = [{json.dumps(str(pictures))}]
excludes = [".git", "*.tmp"]
repositories = ["aws-ireland", "ovh-frankfort"]
schedule = ["1d"]
watch = {{ wait_min = "5s", wait_max = "30s" }}
priority = "inferior"
upload_limit = "{UPLOAD_LIMIT}"
retention = {{ keep_daily = 7, keep_weekly = 4, keep_monthly = 12 }}
resources = {{ cpu_weight = 20, io_weight = 20, nice = 10, ionice = "idle" }}

[backups.grafana]
paths = [{json.dumps(str(dump.directory))}]
repositories = ["ovh-frankfort"]
schedule = ["1h"]
priority = "superior"
retention = {{ keep_hourly = 48, keep_daily = 30 }}

[[backups.grafana.hooks.before]]
type = "http"
url = {json.dumps(dump.url)}
method = "POST"
timeout = "1m"
retries = 3
on_failure = "stop"
"""
    )
    config.chmod(0o600)  # root's: it holds the repositories' passwords
    return config


def make_pictures(tmp_path: Path) -> tuple[Path, Path]:
    """The pictures already there (backed up an hour ago, by the record), and a camera's
    card of PICTURES new ones, beside: the burst copies it in."""
    pictures = tmp_path / "pictures"
    (pictures / "2025").mkdir(parents=True)
    for number in range(5):
        (pictures / "2025" / f"IMG_{number:04}.jpg").write_bytes(os.urandom(PICTURE_SIZE))
    card = tmp_path / "card" / "DCIM"
    card.mkdir(parents=True)
    for number in range(PICTURES):
        (card / f"IMG_{number:04}.jpg").write_bytes(os.urandom(PICTURE_SIZE))
    return pictures, card


def one(daemon: Daemon, kind: str, **fields: str) -> Event:
    """The one event of `kind` with these fields (AssertionError if none or more)."""
    found = daemon.find(kind, **fields)
    assert len(found) == 1, f"{len(found)} {kind} {fields}, not one:\n{daemon.report()}"
    return found[0]


def index(daemon: Daemon, event: Event) -> int:
    """Where `event` is in the order the daemon said things (its one stderr pipe)."""
    return next(i for i, e in enumerate(daemon.events) if e is event)


def test_the_seed_story(
    restic: str,
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    rest_repository: RestServer,  # noqa: F811
    dump_server: DumpServer,
) -> None:
    pictures, card = make_pictures(tmp_path)
    config = write_config(tmp_path, restic, s3_server, rest_repository, dump_server)
    base = tmp_path / "daemon"
    started = time.time()
    write_state(base / "state", "pictures", started - 3600)  # daily: not due for 23 h
    write_state(base / "state", "grafana", started - 3600 + HOUR_COMES_IN)
    hour = started + HOUR_COMES_IN

    with Daemon(config, base) as daemon:
        daemon.wait_triggers_armed("pictures")
        grafana = daemon.wait_triggers_armed("grafana")
        assert abs(grafana["next_run"] - hour) < 1, daemon.report()
        daemon.collect(hour - BURST_BEFORE - time.time())  # nothing happens meanwhile
        assert not daemon.find("trigger.fired"), daemon.report()

        burst = time.time()
        shutil.copytree(card, pictures / "2026-12-02")  # the burst, in one go
        first = daemon.wait_for("job.started", 60, backup="pictures", operation="backup")
        assert first["HENBACKUP_REPOSITORY"] == "aws-ireland", daemon.report()
        grafana_done = daemon.wait_for(
            "job.succeeded", DEADLINE, backup="grafana", operation="backup"
        )
        last = daemon.wait_for(
            "job.succeeded",
            DEADLINE,
            backup="pictures",
            operation="backup",
            repository="ovh-frankfort",
        )
        for repository in ("aws-ireland", "ovh-frankfort"):  # the retention, after each
            daemon.wait_for(
                "job.succeeded", 60, backup="pictures", operation="forget", repository=repository
            )

        # The burst made one pictures run: one trigger, one backup job per repository.
        fired = daemon.find("trigger.fired", backup="pictures")
        assert [e["HENBACKUP_TRIGGER"] for e in fired] == ["watch"], daemon.report()
        jobs = daemon.find("job.started", backup="pictures", operation="backup")
        repositories = [e["HENBACKUP_REPOSITORY"] for e in jobs]
        assert repositories == ["aws-ireland", "ovh-frankfort"], daemon.report()

        # Grafana's hour came while pictures uploaded: it waited, paused pictures, ran its
        # hook, and its snapshot came before the pictures run ended.
        grafana_fired = one(daemon, "trigger.fired", backup="grafana")
        assert grafana_fired["HENBACKUP_TRIGGER"] == "schedule", daemon.report()
        queued = one(daemon, "job.queued", backup="grafana")
        grafana_started = one(daemon, "job.started", backup="grafana", operation="backup")
        came_first = "pictures must be uploading when Grafana's hour comes (a slow start?)"
        assert index(daemon, first) < index(daemon, queued), f"{came_first}\n{daemon.report()}"
        paused = one(daemon, "job.paused", backup="pictures")
        assert paused["HENBACKUP_PAUSED_FOR"] == queued["HENBACKUP_JOB"], daemon.report()
        assert paused["HENBACKUP_PAUSED_HOW"] == "freezer", daemon.report()  # its cgroup leaf
        assert (paused["HENBACKUP_PRIORITY"], paused["HENBACKUP_PAUSED_FOR_PRIORITY"]) == (
            "-10",
            "10",
        ), daemon.report()
        resumed = one(daemon, "job.resumed", backup="pictures")
        same = paused["HENBACKUP_JOB"] == resumed["HENBACKUP_JOB"] == first["HENBACKUP_JOB"]
        assert same, daemon.report()
        hook = one(daemon, "hook.succeeded", backup="grafana")
        assert len(dump_server.dumps) == 1, daemon.report()
        order = [paused, hook, grafana_started, grafana_done, resumed, last]
        assert sorted(order, key=lambda e: index(daemon, e)) == order, daemon.report()

        assert not daemon.find("job.failed"), daemon.report()
        assert not daemon.find("job.stalled") and not daemon.find("daemon.error"), daemon.report()
        assert not daemon.find("hook.failed"), daemon.report()

        # The schedules count from these runs: Grafana's next hour, pictures' next day (the
        # status says so once each worker has told the master that its run ended).
        entry = daemon.wait_worker("grafana", lambda w: w["next_run"] >= hour + 3600)
        assert entry["next_run"] - 3600 <= when(grafana_done), daemon.report()
        entry = daemon.wait_worker("pictures", lambda w: w["next_run"] >= burst + 86400)
        assert entry["next_run"] - 86400 <= when(last), daemon.report()

        # Every picture is in both repositories; Grafana's snapshot holds its dump.
        for repository in ("aws-ireland", "ovh-frankfort"):
            snapshot = daemon.find(
                "job.succeeded", backup="pictures", operation="backup", repository=repository
            )
            target = tmp_path / f"restored-{repository}"
            restore = ctl(
                daemon,
                "restore-snapshot",
                repository,
                snapshot[0]["HENBACKUP_SNAPSHOT"],
                "--target",
                str(target),
            )
            assert restore.returncode == 0, said(restore)
            assert tree_state(restored(target, pictures)) == tree_state(pictures), repository
        target = tmp_path / "restored-grafana"
        restore = ctl(
            daemon,
            "restore-snapshot",
            "ovh-frankfort",
            grafana_done["HENBACKUP_SNAPSHOT"],
            "--target",
            str(target),
        )
        assert restore.returncode == 0, said(restore)
        dumped = restored(target, dump_server.directory)
        assert (dumped / "grafana.db").read_bytes() == dump_server.dumps[0]
        assert sorted(p.name for p in dumped.iterdir()) == ["grafana.db"]

        for repository in ("aws-ireland", "ovh-frankfort"):
            check = ctl(daemon, "check", repository)
            assert check.returncode == 0, said(check)
        assert not daemon.find("job.failed"), daemon.report()
    assert not daemon.leftovers and not daemon.noise, daemon.report()
