"""henbackupctl and the queue end to end: one slow backup (a big random file, upload_limit)
holds the only slot while others wait: queue, status while running, cancel of a waiting and of
a running job. Real client, real daemon, restic 0.14."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ctl_schemas
import pytest
from ctl_helpers import (
    AGO,
    ONE_RESTIC,
    PASSWORD,
    Client,
    Completed,
    cells_match,
    columns,
    ctl,
    free_port,
    get_metrics,
    lines,
    make_tree,
    new_repository,
    parse_metrics,
    reply,
    restic_run,
    said,
    status_row,
    value,
    write_config,
)
from daemon_helpers import Daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# --- scenario: one slow backup holding the only slot, others waiting --------------------------


@dataclass
class Busy:
    daemon: Daemon
    repository: Path
    port: int
    textfile: Path
    calls: dict[str, Completed] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    stop_code: int | None = None

    def ctl(self, name: str, *args: str) -> Completed:
        self.calls[name] = ctl(self.daemon, *args)
        return self.calls[name]


def _gauges(text: str) -> tuple[float | None, float | None]:
    samples, _ = parse_metrics(text)
    return value(samples, "henbackup_jobs_running"), value(samples, "henbackup_jobs_waiting")


@pytest.fixture(scope="module")
def busy(
    restic: str, tmp_path_factory: pytest.TempPathFactory, _templates: dict[str, Path]
) -> Busy:
    base = tmp_path_factory.mktemp("ctl-busy")
    repository = new_repository(restic, base / "local", _templates, tmp_path_factory)
    # ~12 s at 2 MiB/s: time enough to look at the queue and cancel; restic, interrupted,
    # still finishes the pack uploads in flight (a few seconds at this rate)
    pictures = make_tree(base / "pictures", big=24 << 20)
    docs = make_tree(base / "docs")
    port = free_port()
    textfile = base / "henbackup.prom"
    config = write_config(
        base,
        restic,
        {"local": (repository, PASSWORD)},
        {
            "pictures": {
                "paths": [str(pictures)],
                "repositories": ["local"],
                "upload_limit": "2M",
            },
            "docs": {"paths": [str(docs)], "repositories": ["local"]},
        },
        {"textfile": str(textfile), "listen": f"127.0.0.1:{port}"},
    )
    busy = Busy(Daemon(config, base), repository, port, textfile)
    busy.daemon.start()
    try:
        _play_busy(busy, repository)
    finally:
        busy.stop_code = busy.daemon.stop()
    busy.notes["locks"] = restic_run(restic, repository, "list", "locks", "--no-lock").stdout
    return busy


def _play_busy(b: Busy, repository: Path) -> None:
    daemon = b.daemon
    daemon.wait_for("daemon.started")
    slow = Client(daemon.socket, "backup", "pictures")
    clients = [slow]
    try:
        started = daemon.wait_for("job.started", operation="backup", backup="pictures")
        b.notes["pictures_job"] = job = started["HENBACKUP_JOB"]
        # restic is at work once its lock is in the repository
        assert daemon.pump_until(lambda: any((repository / "locks").iterdir()), 20, step=0.05)
        queued = Client(daemon.socket, "backup", "docs")
        clients.append(queued)
        daemon.wait_for("job.queued", backup="docs")
        b.ctl("check-no-wait-json", "--json", "check", "local", "--priority", "next", "--no-wait")
        check = daemon.wait_for("job.queued", operation="check")
        b.notes["check_job"] = check["HENBACKUP_JOB"]

        b.ctl("queue", "queue")
        b.ctl("queue-json", "--json", "queue")
        b.ctl("status-json", "--json", "status")
        # the HTTP metrics are rendered live; the textfile gets a moment to follow them
        daemon.pump_until(lambda: _gauges(get_metrics(b.port)) == (1, 2), 5, step=0.1)
        b.notes["http_busy"] = get_metrics(b.port)
        daemon.pump_until(lambda: _gauges(b.textfile.read_text()) == (1, 2), 2, step=0.1)
        b.notes["textfile_busy"] = b.textfile.read_text()

        b.ctl("cancel-waiting", "cancel", b.notes["check_job"])
        daemon.wait_for("job.cancelled", job=b.notes["check_job"])
        b.notes["still_running"] = slow.running() and not daemon.find("job.succeeded", job=job)
        b.ctl("cancel-running-json", "--json", "cancel", job)
        b.notes["cancelled"] = daemon.wait_for("job.cancelled", timeout=45, job=job)
        b.notes["slow"] = slow.result(daemon)
        b.notes["queued"] = queued.result(daemon)
        b.notes["docs_done"] = daemon.wait_for("job.succeeded", backup="docs")
        b.ctl("cancel-again", "cancel", job)
        b.ctl("cancel-unknown", "cancel", "deadbeef")
        b.ctl("queue-after", "queue")
    finally:
        for client in clients:
            if client.running():
                client.process.kill()


@ONE_RESTIC
def test_queue_lists_the_running_job_then_the_waiting_ones_in_order(busy: Busy) -> None:
    call = busy.calls["queue-json"]
    assert (call.returncode, call.stderr) == (0, ""), said(call)
    answer = reply(call)
    ctl_schemas.validate(answer, ctl_schemas.QUEUE)
    picked = [
        {
            k: job[k]
            for k in ("job", "state", "position", "operation", "backup", "repository", "priority")
        }
        for job in answer["jobs"]
    ]
    docs_job = busy.daemon.wait_for("job.queued", backup="docs")["HENBACKUP_JOB"]
    assert picked == [
        {
            "job": busy.notes["pictures_job"],
            "state": "running",
            "position": None,
            "operation": "backup",
            "backup": "pictures",
            "repository": "local",
            "priority": "normal",
        },
        {
            "job": busy.notes["check_job"],
            "state": "waiting",
            "position": 1,
            "operation": "check",
            "backup": None,
            "repository": "local",
            "priority": "next",
        },
        {
            "job": docs_job,
            "state": "waiting",
            "position": 2,
            "operation": "backup",
            "backup": "docs",
            "repository": "local",
            "priority": "normal",
        },
    ]
    human = lines(busy.calls["queue"].stdout)
    assert columns(human[0]) == [
        "POS", "JOB", "STATE", "OPERATION", "BACKUP", "REPOSITORY", "PRIORITY", "SINCE"
    ]  # fmt: skip
    rows = [columns(line) for line in human[1:]]
    assert cells_match(
        rows[0],
        ["-", busy.notes["pictures_job"], r"running( [0-9.]+%)?", "backup", "pictures", "local",
         "normal", AGO],
    ), human  # fmt: skip
    assert cells_match(
        rows[1], ["1", busy.notes["check_job"], "waiting", "check", "-", "local", "next", AGO]
    ), human
    assert cells_match(
        rows[2], ["2", docs_job, "waiting", "backup", "docs", "local", "normal", AGO]
    ), human
    after = busy.calls["queue-after"]
    assert (after.returncode, after.stdout) == (0, "no job is waiting or running\n")


@ONE_RESTIC
def test_status_shows_the_running_and_the_queued_job(busy: Busy) -> None:
    status = reply(busy.calls["status-json"])
    ctl_schemas.validate(status, ctl_schemas.STATUS)
    running = status_row(status, "pictures", "local")
    assert (running["state"], running["job"], running["position"]) == (
        "running",
        busy.notes["pictures_job"],
        None,
    )
    queued = status_row(status, "docs", "local")
    assert (queued["state"], queued["position"]) == ("queued", 2)
    assert status["status"].startswith("2 backups; running: pictures→local")
    assert status["status"].endswith("; queued: 2")


@ONE_RESTIC
def test_status_shows_a_waiting_check_of_a_repository(busy: Busy) -> None:
    """`local` has no check schedule and was never checked: its check, asked by hand and
    waiting in the queue, is still one of the repository's operations in status."""
    status = reply(busy.calls["status-json"])
    (local,) = [r for r in status["repositories"] if r["name"] == "local"]
    waiting = [(o["operation"], o["state"], o["job"]) for o in local["operations"]]
    assert waiting == [("check", "queued", busy.notes["check_job"])], local


@ONE_RESTIC
def test_cancel_a_waiting_job(busy: Busy) -> None:
    call = busy.calls["cancel-waiting"]
    job = busy.notes["check_job"]
    assert (call.returncode, call.stderr) == (0, ""), said(call)
    assert call.stdout == f"job {job}: cancel requested (it was waiting)\n"
    ctl_schemas.validate(reply(busy.calls["check-no-wait-json"]), ctl_schemas.ONE_OFF_ACCEPTED)
    assert busy.daemon.find("job.started", job=job) == []


@ONE_RESTIC
def test_cancel_the_running_job(busy: Busy) -> None:
    """Exit 0 and a job.cancelled event for that job; restic is stopped cleanly (no lock
    left); the client that waited for the backup exits 1 and says it was cancelled; the
    next job in the queue then runs."""
    job = busy.notes["pictures_job"]
    assert busy.notes["still_running"], "the slow backup ended before it could be cancelled"
    call = busy.calls["cancel-running-json"]
    assert (call.returncode, call.stderr) == (0, ""), said(call)
    answer = reply(call)
    ctl_schemas.validate(answer, ctl_schemas.CANCEL)
    assert answer == {"ok": True, "job": job, "was": "running"}
    cancelled = busy.notes["cancelled"]
    assert (cancelled["HENBACKUP_BACKUP"], cancelled["HENBACKUP_REPOSITORY"]) == (
        "pictures",
        "local",
    )
    assert busy.daemon.find("job.succeeded", job=job) == []
    assert busy.daemon.find("job.failed", job=job) == []
    assert busy.notes["locks"] == b""
    assert busy.stop_code == 0, busy.daemon.report()
    assert busy.daemon.noise == [], busy.daemon.report()

    slow = busy.notes["slow"]
    assert slow.returncode == 1, said(slow)
    assert lines(slow.stdout) == [
        "pictures→local: backup started",
        "pictures→local: backup cancelled",
    ]
    assert slow.stderr == "henbackupctl: pictures→local: cancelled\n"


@ONE_RESTIC
def test_a_waiting_backup_shows_it_was_queued(busy: Busy) -> None:
    queued = busy.notes["queued"]
    assert (queued.returncode, queued.stderr) == (0, ""), said(queued)
    snapshot = busy.notes["docs_done"]["HENBACKUP_SNAPSHOT"]
    assert lines(queued.stdout) == [
        "docs→local: backup queued, position 1",
        "docs→local: backup started",
        f"docs→local: backup succeeded: snapshot {snapshot}",
    ]


@ONE_RESTIC
def test_cancel_of_an_unknown_job_is_exit_2(busy: Busy) -> None:
    for name, job in (("cancel-again", busy.notes["pictures_job"]), ("cancel-unknown", "deadbeef")):
        call = busy.calls[name]
        assert (call.returncode, call.stdout) == (2, ""), said(call)
        assert call.stderr == (
            f"henbackupctl: no job '{job}' is waiting or running (see henbackupctl queue)\n"
        )


@ONE_RESTIC
def test_metrics_count_running_and_waiting_jobs(busy: Busy) -> None:
    """One job running, two waiting: the HTTP metrics say so, and so must the textfile
    (node_exporter serves it as it is, for as long as the job runs)."""
    assert _gauges(busy.notes["http_busy"]) == (1, 2)
    assert _gauges(busy.notes["textfile_busy"]) == (1, 2), "the textfile lags behind"
