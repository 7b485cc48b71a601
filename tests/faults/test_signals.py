"""A job process stopped (SIGTERM) where it cannot stop at once: inside the queue's code,
or while a before hook waits on a server that does not answer.

Its handler only records; the job acts on the stop at its next safe point (a queue wait, a
hook's wait, the engine's checkpoint), with nothing half done behind it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # its helpers, not copies of them

from daemon_helpers import PASSWORD, Daemon, henbackupctl  # noqa: E402
from test_hooks_http import Server  # noqa: E402

from henbackup.config.model import NORMAL  # noqa: E402
from henbackup.errors import StopRequested  # noqa: E402
from henbackup.scheduler import locks  # noqa: E402
from henbackup.scheduler.queue import Scheduler  # noqa: E402
from henbackup.scheduler.ticket import Ticket  # noqa: E402

# SIGTERM comes while the job takes its turn under the queue lock: the slot and the
# repository are locked, its ticket is being rewritten as running. (A fake widens that
# window, a few microseconds wide: the signal is sent from inside the queue's code.)
STOP_INSIDE_THE_QUEUE = textwrap.dedent(
    """
    import os, signal
    from henbackup.config.model import NORMAL
    from henbackup.errors import StopRequested
    from henbackup.jobs import entry
    from henbackup.jobs.job import Job
    from henbackup.jobs.pipeline import queued
    from henbackup.scheduler import locks
    from henbackup.scheduler.ticket import Ticket

    entry._handle_signals()
    running = Ticket.running

    def stopped_midway(self, slot):
        os.kill(os.getpid(), signal.SIGTERM)
        return running(self, slot)

    Ticket.running = stopped_midway
    scheduler = entry.host_scheduler()
    job = Job("backup", "local", "home", "manual", NORMAL)
    try:
        with queued(job, scheduler, lambda *args, **fields: None):
            print("granted")
            entry.checkpoint()  # the engine's, as restic starts
            print("not stopped")
    except StopRequested as stop:
        print(stop)
    Ticket.running = running
    directory = scheduler.directory
    free = [
        path.name
        for path in [directory / "lock", *directory.glob("slot-*"), *directory.glob("repository-*")]
        if locks.is_free(path, locks.EXCLUSIVE)
    ]
    print(sorted(free))
    print(sorted(path.name for path in (directory / "tickets").iterdir()))
    """
)


def test_a_stop_inside_the_queue_code_is_acted_on_after_it_with_nothing_left_held(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", STOP_INSIDE_THE_QUEUE],
        env={"RUNTIME_DIRECTORY": str(tmp_path), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Before: StopRequested was raised inside the queue's code, after the slot and the
    # repository were locked and before the Grant that releases them existed; they stayed
    # locked by the job process (which goes on to run its failure hooks) for no ticket.
    assert done.stdout.splitlines() == [
        "granted",
        "stopped by SIGTERM",
        "['lock', 'repository-local', 'slot-0']",
        "[]",
    ], done.stderr


# A job waiting for its turn (another holds the only slot) when SIGTERM comes.
STOP_WHILE_QUEUED = textwrap.dedent(
    """
    from henbackup.config.model import NORMAL
    from henbackup.errors import StopRequested
    from henbackup.jobs import entry
    from henbackup.jobs.job import Job
    from henbackup.jobs.pipeline import queued

    def emit(kind, message, **fields):
        print(kind, flush=True)

    entry._handle_signals()
    job = Job("backup", "local", "home", "manual", NORMAL)
    try:
        with queued(job, entry.host_scheduler(), emit):
            print("granted")
    except StopRequested as stop:
        print(stop)
    """
)


def test_a_stop_wakes_a_job_waiting_in_the_queue(tmp_path):
    """The handler only records: the queue's wait must wake on it (the wakeup fd), not sleep
    on until the slot frees; the job leaves the queue, cancelled."""
    scheduler = Scheduler(tmp_path / "scheduler")
    holder = Ticket("holder", "other", NORMAL)
    with scheduler.acquire(holder):
        job = subprocess.Popen(
            [sys.executable, "-c", STOP_WHILE_QUEUED],
            env={"RUNTIME_DIRECTORY": str(tmp_path), "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert job.stdout is not None
        assert job.stdout.readline() == "job.queued\n"
        job.send_signal(signal.SIGTERM)
        try:
            out, err = job.communicate(timeout=30)  # before the wakeup: until the slot frees
        except subprocess.TimeoutExpired:
            job.kill()
            raise
        assert [t.job_id for t in scheduler.queue()] == ["holder"]
    assert (job.returncode, out.splitlines()) == (
        0,
        ["job.cancelled", "stopped by SIGTERM"],
    ), err


@pytest.fixture
def hanging_server():
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.done.set()  # the hanging handler gives up
    httpd.shutdown()
    httpd.server_close()


def test_a_stop_during_a_long_http_before_hook_ends_the_job_within_seconds(
    hanging_server, repository, restic, tmp_path
):
    """The before hook's server never answers and the hook may wait 10 minutes: a stop of
    the daemon ends the hook (hook.failed, cancelled) and the daemon within seconds; the
    backup never starts."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("content\n")
    url = hanging_server.url + "/hang"
    lines = [
        "[daemon]",
        f"restic = {json.dumps(restic)}",
        "[metrics]",
        f"textfile = {json.dumps(str(tmp_path / 'henbackup.prom'))}",
        "[repositories.local]",
        f"location = {json.dumps(str(repository))}",
        f"password = {json.dumps(PASSWORD)}",
        "[backups.home]",
        f"paths = [{json.dumps(str(data))}]",
        'repositories = ["local"]',
        "[[backups.home.hooks.before]]",
        'type = "http"',
        f"url = {json.dumps(url)}",
        'timeout = "10m"',
        "retries = 0",
    ]
    config = tmp_path / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.wait_worker("home", lambda w: w["state"] == "running")
        ctl = henbackupctl(daemon, "backup", "home", "--no-wait")
        assert ctl.returncode == 0, ctl.stdout + ctl.stderr + daemon.report()
        daemon.wait_for("hook.started", backup="home")
        assert daemon.pump_until(lambda: hanging_server.hits["/hang"] == 1, 15, step=0.05)
        stopping = time.monotonic()
        code = daemon.stop(timeout=60)
        took = time.monotonic() - stopping
    assert code == 0, daemon.report()
    assert took < 20, f"the stop took {took:.1f} s (the hook waits up to 10 minutes)"
    failed = daemon.wait_for("hook.failed", backup="home")
    assert (failed["HENBACKUP_HOOK"], failed["HENBACKUP_ERROR"]) == ("before", "cancelled")
    assert daemon.find("job.started") == []
    assert daemon.leftovers == []


def test_a_stop_ends_the_wait_for_a_repository_being_created(tmp_path):
    """Another job of this host holds the creation lock (for up to 10 minutes): the wait
    calls the job's checkpoint between polls, so a stop ends it."""
    path = tmp_path / "init-lock"
    held = locks.try_lock(path, locks.EXCLUSIVE)
    assert held is not None

    def stopped() -> None:
        raise StopRequested("stopped by SIGTERM")

    started = time.monotonic()
    try:
        with pytest.raises(StopRequested):
            locks.wait_lock(path, locks.EXCLUSIVE, 600, stopped)
    finally:
        os.close(held)
    assert time.monotonic() - started < 60
