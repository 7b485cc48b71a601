"""Issue 5's "done when", told through the real daemon: `henbackup run` as a subprocess, real
restic, a real local repository, the real henbackupctl.

"With max_concurrent_jobs = 1, a 'grafana' backup with priority superior queued behind three
'pictures' jobs runs next; a restore asked with `next` jumps ahead of both; a dying job never
leaves the queue stuck." (henbackup.toml(5), PRIORITIES)

Nothing rests on timing luck. Where jobs must wait, a blocker holds the only slot: a real
process of the test's that takes a ticket in the daemon's host-wide queue
($RUNTIME_DIRECTORY/scheduler) and holds it until its stdin closes. Each request waits for
its job.queued event before the next is made, so the order of arrival is the order of the
requests (a backup's job process is forked by its worker: two requests sent back to back
could otherwise queue in either order). Every wait is a deadline on an event or on what
`henbackupctl queue` says.

One restic version is enough: the order of the queue, its recovery from a death and the
cancel are the daemon's own; restic 0.14 is Debian 12's, the one the target machines run.
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_helpers import (
    PASSWORD,
    Daemon,
    henbackupctl,
    locks,
    make_data,
    ok,
    restic_command,
    restic_json,
    tree,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ONE_RESTIC = pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)

HOST = "testhost"
DEADLINE = 30.0  # generous: a busy 2-core machine; never asserted on, only waited for
PROMPTLY = 20.0  # how soon the next job must start once a dying job freed the slot


# --- set-up -------------------------------------------------------------------------------


def write_config(
    tmp_path: Path,
    restic: str,
    repository: Path,
    backups: dict[str, dict[str, Any]],
    more_repositories: dict[str, Path] | None = None,
) -> Path:
    """max_concurrent_jobs = 1; one repository, `local` (and `more_repositories`); these
    backups to it (or to their `repositories`), each with its one path and no trigger
    (manual only: nothing runs at start)."""
    lines = [
        "[daemon]",
        f"restic = {json.dumps(restic)}",
        f'hostname = "{HOST}"',
        "max_concurrent_jobs = 1",
        "",
        "[repositories.local]",
        f"location = {json.dumps(str(repository))}",
        f"password = {json.dumps(PASSWORD)}",
    ]
    for name, location in (more_repositories or {}).items():
        lines += ["", f"[repositories.{name}]", f"location = {json.dumps(str(location))}"]
        lines += [f"password = {json.dumps(PASSWORD)}"]
    for name, settings in backups.items():
        lines += ["", f"[backups.{name}]", f"paths = [{json.dumps(settings['path'])}]"]
        lines += [f"repositories = {json.dumps(settings.get('repositories', ['local']))}"]
        lines += [
            f"{k} = {json.dumps(v)}"
            for k, v in settings.items()
            if k not in ("path", "repositories")
        ]
    config = tmp_path / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def queue(daemon: Daemon) -> list[dict[str, Any]]:
    """`henbackupctl --json queue`: running jobs, then waiting ones in the order they run."""
    return json.loads(ok(henbackupctl(daemon, "--json", "queue")))["jobs"]


def wait_queue(
    daemon: Daemon, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = DEADLINE
) -> list[dict[str, Any]]:
    """Ask `queue` (while reading events) until `condition(jobs)`; returns those jobs."""
    jobs: list[dict[str, Any]] = []

    def met() -> bool:
        nonlocal jobs
        jobs = queue(daemon)
        return condition(jobs)

    assert daemon.pump_until(met, timeout, step=0.1), f"queue: {jobs}\n{daemon.report()}"
    return jobs


def waiting(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [job for job in jobs if job["state"] == "waiting"]


def row(job: dict[str, Any]) -> tuple[object, ...]:
    return (job["position"], job["state"], job["operation"], job["backup"], job["priority"])


def request(daemon: Daemon, *args: str, **fields: str) -> dict[str, Any]:
    """Run `henbackupctl ARGS --no-wait` and wait for the job.queued event it causes
    (the job with `fields`); returns that event."""
    since = len(daemon.events)
    ok(henbackupctl(daemon, *args, "--no-wait"))
    return daemon.wait_for("job.queued", timeout=DEADLINE, since=since, **fields)


def clean_exit(daemon: Daemon) -> None:
    """Stop the daemon; it must exit 0, leave no process behind and print no traceback."""
    code = daemon.stop()
    assert code == 0, f"exit {code}\n{daemon.report()}"
    assert daemon.leftovers == []
    assert daemon.noise == [], daemon.report()


# --- the blocker: a process of the test's holding the only slot ------------------------------

BLOCKER = """
import sys
from henbackup.config.model import Priority
from henbackup.scheduler import Scheduler, Ticket

ticket = Ticket("blocker", "elsewhere", Priority.ordinary(0))
with Scheduler(sys.argv[1]).acquire(ticket):
    print("held", flush=True)
    sys.stdin.read()
print("released", flush=True)
"""


class Blocker:
    """A real process that holds the host's only slot (on a repository no job uses)."""

    def __init__(self, daemon: Daemon) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", BLOCKER, str(daemon.runtime / "scheduler")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=daemon.env,
        )
        self.expect("held")

    def expect(self, word: str) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], DEADLINE)
        assert ready, f"the blocker did not say {word} within {DEADLINE} s"
        assert self.process.stdout.readline().decode().strip() == word

    def release(self) -> None:
        """Close its stdin: it gives the slot back (and wakes the next job) and exits."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.expect("released")
        assert self.process.wait(DEADLINE) == 0

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()


@contextlib.contextmanager
def holding_the_slot(daemon: Daemon) -> Iterator[Blocker]:
    """Once the daemon has set the slots (daemon.started), hold the only one."""
    daemon.wait_for("daemon.started", timeout=DEADLINE)
    blocker = Blocker(daemon)
    try:
        yield blocker
    finally:
        blocker.kill()


def the_blocker(job: dict[str, Any], blocker: Blocker) -> bool:
    return (job["job"], job["state"], job["pid"]) == ("blocker", "running", blocker.process.pid)


# --- the story ------------------------------------------------------------------------------


@ONE_RESTIC
def test_a_restore_asked_next_then_superior_grafana_run_before_three_waiting_pictures(
    restic, repository, tmp_path
):
    archive = make_data(tmp_path / "archive")
    restic_command(
        restic, repository, "backup", "--host", HOST, "--tag", "backup-archive", str(archive)
    )
    (old,) = restic_json(restic, repository, "snapshots")
    pictures = [f"pictures-{letter}" for letter in "abc"]
    backups = {name: {"path": str(make_data(tmp_path / name))} for name in pictures}
    grafana = make_data(tmp_path / "grafana")
    backups["grafana"] = {"path": str(grafana), "priority": "superior"}
    target = tmp_path / "restored"

    daemon = Daemon(write_config(tmp_path, restic, repository, backups), tmp_path)
    with daemon, holding_the_slot(daemon) as blocker:
        queued = {}
        for name, position in zip([*pictures, "grafana"], ["1", "2", "3", "1"], strict=True):
            queued[name] = request(daemon, "backup", name, backup=name)
            assert queued[name]["HENBACKUP_POSITION"] == position, daemon.report()
        queued["restore"] = request(
            daemon,
            "restore-snapshot",
            "local",
            old["short_id"],
            "--target",
            str(target),
            "--priority",
            "next",
            operation="restore",
        )
        assert queued["restore"]["HENBACKUP_POSITION"] == "1", daemon.report()

        jobs = wait_queue(daemon, lambda jobs: len(waiting(jobs)) == 5)
        assert the_blocker(jobs[0], blocker), jobs
        assert [row(job) for job in jobs[1:]] == [
            (1, "waiting", "restore", "archive", "next"),
            (2, "waiting", "backup", "grafana", "superior"),
            (3, "waiting", "backup", "pictures-a", "normal"),
            (4, "waiting", "backup", "pictures-b", "normal"),
            (5, "waiting", "backup", "pictures-c", "normal"),
        ]
        order = ["restore", "grafana", *pictures]
        ids = [queued[name]["HENBACKUP_JOB"] for name in order]
        assert [job["job"] for job in jobs[1:]] == ids
        # What people read: the same order, top to bottom.
        table = ok(henbackupctl(daemon, "queue")).splitlines()
        shown = [next(i for i, line in enumerate(table) if job in line) for job in ids]
        assert shown == sorted(shown), "\n".join(table)
        assert daemon.find("job.started") == [], daemon.report()

        blocker.release()
        for job in ids:
            daemon.wait_for("job.succeeded", timeout=60, job=job)
        started = daemon.find("job.started")
        assert [(e["HENBACKUP_OPERATION"], e["HENBACKUP_BACKUP"]) for e in started] == [
            ("restore", "archive"),
            ("backup", "grafana"),
            *[("backup", name) for name in pictures],
        ], daemon.report()
        assert [e["HENBACKUP_JOB"] for e in started] == ids
        assert daemon.find("job.failed") == [], daemon.report()
        assert wait_queue(daemon, lambda jobs: jobs == []) == []
        clean_exit(daemon)

    # The restore put the old snapshot's files back, byte for byte.
    assert tree(target / archive.relative_to(archive.anchor)) == tree(archive)
    tags = sorted(s["tags"][0] for s in restic_json(restic, repository, "snapshots"))
    assert tags == sorted(f"backup-{name}" for name in ["archive", "grafana", *pictures])
    assert locks(restic, repository) == []


def restic_of(pid: int) -> psutil.Process:
    """The restic process a job process runs (waits for it)."""
    found: list[psutil.Process] = []

    def look() -> bool:
        # The job runs short restic commands before the backup: one may be a zombie by now.
        with contextlib.suppress(psutil.Error):
            children = [c for c in psutil.Process(pid).children() if c.name() == "restic"]
            found[:] = [c for c in children if "backup" in c.cmdline()]
        return bool(found)

    deadline = time.monotonic() + DEADLINE
    while not look():
        assert time.monotonic() < deadline, f"job process {pid} never ran restic backup"
        time.sleep(0.05)
    return found[0]


@ONE_RESTIC
def test_a_job_killed_while_it_runs_frees_its_slot_and_the_next_one_starts(
    restic, repository, tmp_path
):
    """The whole job dies at once, as under the OOM killer: its process by SIGKILL, and its
    restic without a chance to remove its lock (stopped first, so that the SIGINT its
    parent's death sends it is never handled, then killed). The waiting job starts while
    the stopped restic is still there: only the job process held the slot. The master says
    why the job failed; the stale lock goes at the next run that needs the repository
    alone."""
    pictures = make_data(tmp_path / "pictures", big=16 << 20)  # ~16 s at 1M/s: killed long before
    documents = make_data(tmp_path / "documents")
    backups = {
        "pictures": {"path": str(pictures), "upload_limit": "1M"},
        "documents": {"path": str(documents)},
    }
    daemon = Daemon(write_config(tmp_path, restic, repository, backups), tmp_path)
    with daemon:
        daemon.wait_for("daemon.started", timeout=DEADLINE)
        ok(henbackupctl(daemon, "backup", "pictures", "--no-wait"))
        running = daemon.wait_for("job.started", timeout=DEADLINE, backup="pictures")
        doomed = running["HENBACKUP_JOB"]
        assert request(daemon, "backup", "documents", backup="documents")["HENBACKUP_POSITION"] == (
            "1"
        )
        first, second = wait_queue(daemon, lambda jobs: len(jobs) == 2)
        assert (first["job"], first["state"], second["state"]) == (doomed, "running", "waiting")
        job_process = psutil.Process(first["pid"])
        assert job_process.ppid() != daemon.pid  # a worker's job process, not the master
        restic_process = restic_of(job_process.pid)
        assert daemon.pump_until(lambda: locks(restic, repository) != [], DEADLINE), (
            "restic never locked the repository\n" + daemon.report()
        )
        lock = locks(restic, repository)

        restic_process.suspend()
        try:
            job_process.kill()
            killed = time.monotonic()
            since = daemon.events.index(running)
            nxt = daemon.wait_for("job.started", timeout=PROMPTLY, since=since, backup="documents")
            assert time.monotonic() - killed < PROMPTLY
            assert restic_process.is_running()  # stopped, holding its lock: it pins no slot
        finally:
            restic_process.kill()
        psutil.wait_procs([restic_process], timeout=DEADLINE)

        failed = daemon.wait_for("job.failed", timeout=DEADLINE, job=doomed)
        assert {k: failed.get(f"HENBACKUP_{k}") for k in ("BACKUP", "REPOSITORY", "ERROR")} == {
            "BACKUP": "pictures",
            "REPOSITORY": "local",
            "ERROR": "its process was killed by SIGKILL before the job ended",
        }
        daemon.wait_for("job.succeeded", timeout=60, job=nxt["HENBACKUP_JOB"])
        assert daemon.find("job.succeeded", backup="pictures") == []
        assert wait_queue(daemon, lambda jobs: jobs == []) == []

        # The killed restic's lock is still there; the next job that needs the repository
        # exclusively (a check) removes it as stale and runs.
        assert locks(restic, repository) == lock
        ok(henbackupctl(daemon, "check", "local"))
        assert locks(restic, repository) == []
        assert queue(daemon) == []
        status = json.loads(ok(henbackupctl(daemon, "--json", "status")))
        rows = {b["name"]: b["repositories"][0] for b in status["backups"]}
        assert (rows["pictures"]["result"], rows["pictures"]["error"]) == (
            "failed",
            "its process was killed by SIGKILL before the job ended",
        )
        assert rows["documents"]["result"] == "succeeded"
        clean_exit(daemon)
    assert len(daemon.find("job.failed")) == 1, daemon.report()


@ONE_RESTIC
def test_a_waiting_job_cancelled_never_starts_and_the_next_one_runs(restic, repository, tmp_path):
    backups = {name: {"path": str(make_data(tmp_path / name))} for name in ("first", "second")}
    daemon = Daemon(write_config(tmp_path, restic, repository, backups), tmp_path)
    with daemon, holding_the_slot(daemon) as blocker:
        cancelled = request(daemon, "backup", "first", backup="first")["HENBACKUP_JOB"]
        runs = request(daemon, "backup", "second", backup="second")["HENBACKUP_JOB"]
        jobs = wait_queue(daemon, lambda jobs: len(waiting(jobs)) == 2)
        assert [(job["job"], job["position"]) for job in jobs[1:]] == [(cancelled, 1), (runs, 2)]

        said = ok(henbackupctl(daemon, "cancel", cancelled))
        assert said == f"job {cancelled}: cancel requested (it was waiting)\n"
        event = daemon.wait_for("job.cancelled", timeout=DEADLINE, job=cancelled)
        assert (event["HENBACKUP_BACKUP"], event["HENBACKUP_OPERATION"]) == ("first", "backup")
        jobs = wait_queue(daemon, lambda jobs: len(jobs) == 2)
        assert the_blocker(jobs[0], blocker), jobs
        assert (jobs[1]["job"], jobs[1]["position"]) == (runs, 1)

        blocker.release()
        daemon.wait_for("job.succeeded", timeout=60, job=runs)
        assert wait_queue(daemon, lambda jobs: jobs == []) == []
        status = json.loads(ok(henbackupctl(daemon, "--json", "status")))
        results = {b["name"]: b["repositories"][0]["result"] for b in status["backups"]}
        assert results == {"first": "cancelled", "second": "succeeded"}
        clean_exit(daemon)
    assert [e["HENBACKUP_JOB"] for e in daemon.find("job.started")] == [runs]
    assert daemon.find("job.failed") == [], daemon.report()
    assert [s["tags"] for s in restic_json(restic, repository, "snapshots")] == [["backup-second"]]


def job_processes(daemon: Daemon) -> list[psutil.Process]:
    """The daemon's job processes (named hbjob:NAME), of workers and of the master."""
    found = []
    for process in daemon._descendants():
        with contextlib.suppress(psutil.Error):
            if process.name().startswith("hbjob:"):
                found.append(process)
    return found


@ONE_RESTIC
def test_a_backup_keeps_its_place_across_its_repositories_and_waits_as_a_ticket(
    restic, repository, tmp_path
):
    """Behind the blocker: pictures (normal, to two repositories), then documents (normal)
    and music (inferior), asked later. Nothing waits as a process: the queued events come
    from the workers, and no job process exists until the slot is granted. Once pictures'
    first repository ran, its second one runs next: neither documents, which came later,
    nor music, of lower priority, takes the slot in between."""
    second = tmp_path / "second"
    shutil.copytree(repository, second)
    backups: dict[str, dict[str, Any]] = {
        "pictures": {
            "path": str(make_data(tmp_path / "pictures")),
            "repositories": ["local", "second"],
        },
        "documents": {"path": str(make_data(tmp_path / "documents"))},
        "music": {"path": str(make_data(tmp_path / "music")), "priority": "inferior"},
    }
    config = write_config(tmp_path, restic, repository, backups, {"second": second})
    daemon = Daemon(config, tmp_path)
    with daemon, holding_the_slot(daemon) as blocker:
        queued = [request(daemon, "backup", name, backup=name) for name in backups]
        wait_queue(daemon, lambda jobs: len(waiting(jobs)) == 3)
        assert job_processes(daemon) == []  # waiting jobs are tickets of their workers
        workers = {w.pid for w in psutil.Process(daemon.pid).children()}
        assert {int(event["HENBACKUP_PID"]) for event in queued} <= workers

        blocker.release()
        for name in backups:
            daemon.wait_for("job.succeeded", timeout=90, backup=name, repository="local")
        daemon.wait_for("job.succeeded", timeout=90, backup="pictures", repository="second")
        started = daemon.find("job.started")
        assert [(e["HENBACKUP_BACKUP"], e["HENBACKUP_REPOSITORY"]) for e in started] == [
            ("pictures", "local"),
            ("pictures", "second"),
            ("documents", "local"),
            ("music", "local"),
        ], daemon.report()
        assert started[0]["HENBACKUP_JOB"] == queued[0]["HENBACKUP_JOB"]
        assert daemon.find("job.failed") == [], daemon.report()
        assert wait_queue(daemon, lambda jobs: jobs == []) == []
        clean_exit(daemon)
    assert [s["tags"] for s in restic_json(restic, second, "snapshots")] == [["backup-pictures"]]
