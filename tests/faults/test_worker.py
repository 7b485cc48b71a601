"""Faults of a backup's worker and of its job process: signals, unsaved records, hooks.

Each test provokes the fault for real (a signal, a read-only state directory, a journald
fed an undecodable file name, a hook target answering 500) and checks what users see.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # its helpers, not copies of them

from daemon_helpers import PASSWORD, Daemon, henbackupctl, restic_command  # noqa: E402
from test_hooks_http import Handler, Server  # noqa: E402


def _fixtures_of(room: str):
    """tests/ROOM/conftest.py, whose fixtures the tests there share (`repository`, ...)."""
    sys.path.insert(0, str(ROOT / "tests" / room))
    path = ROOT / "tests" / room / "conftest.py"
    spec = importlib.util.spec_from_file_location(f"{room}_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_integration = _fixtures_of("integration")
_initialized, repository = _integration._initialized, _integration.repository
systemd_harness = _fixtures_of("system").systemd_harness  # a private journald (and manager)

# The job process gets SIGUSR1 (`henbackupctl cancel`) while it holds the host queue's lock
# (releasing a slot, entering the queue, polling its ticket): the handler must not wait for
# that lock, which only this same process could release.
CANCEL_WHILE_LOCKED = textwrap.dedent(
    """
    import os, signal, sys
    from henbackup.jobs import entry
    from henbackup.scheduler import locks
    entry._handle_signals()
    with locks.locked(entry.host_scheduler().directory / "lock"):
        os.kill(os.getpid(), signal.SIGUSR1)
    print("the queue lock was released")
    """
)


def test_a_cancel_arriving_while_the_job_holds_the_queue_lock_does_not_hang(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", CANCEL_WHILE_LOCKED],
        env={"RUNTIME_DIRECTORY": str(tmp_path), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,  # before the fix: for ever (the flock never comes)
    )
    assert (done.returncode, done.stdout) == (0, "the queue lock was released\n"), done.stderr


# --- a run stopped by its before hook is a failed run -----------------------------------------


class DumpHandler(Handler):
    def route_dump(self) -> None:  # Grafana's dump: fine, until the test says it fails
        if self.server.failing:  # type: ignore[attr-defined]
            self.reply(500, b"database is locked\n")
        else:
            self.reply(200, b"dumped\n")


@pytest.fixture
def dump_server():
    httpd = Server()
    httpd.RequestHandlerClass = DumpHandler
    httpd.failing = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def grafana_config(base: Path, restic: str, repositories: dict[str, Path], url: str) -> Path:
    data = base / "grafana-data"
    data.mkdir()
    (data / "dump.sql").write_text("-- the dump the hook made\n")
    lines = [
        "[daemon]",
        f"restic = {json.dumps(restic)}",
        'hostname = "faults"',
        "[metrics]",
        f"textfile = {json.dumps(str(base / 'henbackup.prom'))}",
    ]
    for name, location in repositories.items():
        lines += [f"[repositories.{name}]", f"location = {json.dumps(str(location))}"]
        lines.append(f"password = {json.dumps(PASSWORD)}")
    lines += [
        "[backups.grafana]",
        f"paths = [{json.dumps(str(data))}]",
        f"repositories = {json.dumps(list(repositories))}",
        "[[backups.grafana.hooks.before]]",
        'type = "http"',
        f"url = {json.dumps(url)}",
        'method = "POST"',
        "retries = 0",
        'on_failure = "stop"',
    ]
    config = base / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def test_a_run_stopped_by_its_before_hook_is_recorded_as_failed(
    restic, repository, dump_server, tmp_path
):
    """The Grafana story: the dump fails (HTTP 500), so no backup runs. Every repository the
    run would have gone to gets a job.failed naming the hook, and status and metrics say the
    last run failed, while the last success stays the one before."""
    second = tmp_path / "second"
    restic_command(restic, second, "init")
    repositories = {"local": repository, "second": second}
    url = dump_server.url + "/dump"
    config = grafana_config(tmp_path, restic, repositories, url)
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.wait_worker("grafana", lambda w: w["state"] == "running")
        good = henbackupctl(daemon, "backup", "grafana")
        assert good.returncode == 0, good.stdout + good.stderr + daemon.report()
        before = {r: daemon.wait_for("job.succeeded", repository=r) for r in repositories}

        dump_server.failing = True
        mark = len(daemon.events)
        bad = henbackupctl(daemon, "backup", "grafana")
        assert bad.returncode == 1, bad.stdout + bad.stderr + daemon.report()
        error = f"before hook POST {url}: HTTP 500 Internal Server Error"
        assert bad.stdout.splitlines() == [
            f"grafana: before hook (POST {url}) failed: HTTP 500 Internal Server Error"
            " (the run stops)",
            f"grafana→local: backup failed: {error} (the run stopped)",
            f"grafana→second: backup failed: {error} (the run stopped)",
        ]
        assert bad.stderr.startswith("henbackupctl: ") and bad.stderr.count("\n") == 1
        assert f"grafana→local: {error}" in bad.stderr, bad.stderr
        assert f"grafana→second: {error}" in bad.stderr, bad.stderr
        failed = {r: daemon.wait_for("job.failed", since=mark, repository=r) for r in repositories}
        status = json.loads(henbackupctl(daemon, "--json", "status").stdout)
        textfile = (tmp_path / "henbackup.prom").read_text()
    assert daemon.find("job.started", since=mark) == []
    for name, event in failed.items():
        assert {k: v for k, v in event.items() if k.startswith(("HENBACKUP_", "PRIORITY"))} == {
            "HENBACKUP_EVENT": "job.failed",
            "HENBACKUP_JOB": event["HENBACKUP_JOB"],
            "HENBACKUP_OPERATION": "backup",
            "HENBACKUP_BACKUP": "grafana",
            "HENBACKUP_REPOSITORY": name,
            "HENBACKUP_TRIGGER": "manual",
            "HENBACKUP_PRIORITY": "0",
            "HENBACKUP_ERROR": error,
            "PRIORITY": "3",
        }
        assert event["MESSAGE_ID"] == "a9e817b7809241c1a667ca60a3b1e22f"
        assert event["MESSAGE"] == f"grafana→{name}: backup failed: {error} (the run stopped)"

        (entry,) = [b for b in status["backups"] if b["name"] == "grafana"]
        (row,) = [r for r in entry["repositories"] if r["repository"] == name]
        assert (row["result"], row["error"], row["job"]) == ("failed", error, None)
        assert row["last_success"] is not None and row["last_success"] < row["last_attempt"]
        assert row["snapshot"] is None

        labels = {"backup": "grafana", "repository": name, "operation": "backup"}
        assert metric(textfile, "henbackup_last_run_success", **labels) == 0
        assert metric(textfile, "henbackup_runs_total", **labels, result="failed") == 1
        assert metric(textfile, "henbackup_runs_total", **labels, result="succeeded") == 1
        success = metric(
            textfile, "henbackup_last_success_timestamp_seconds", backup="grafana", repository=name
        )
        assert success == pytest.approx(row["last_success"])
    assert all(event["HENBACKUP_SNAPSHOT"] for event in before.values())
    assert len({event["HENBACKUP_JOB"] for event in failed.values()}) == len(repositories)


# --- a run record that cannot be saved -------------------------------------------------------


def test_a_run_record_that_cannot_be_saved_never_stops_the_backups(restic, repository, tmp_path):
    """A directory where the worker's run record should be: it can neither be read nor
    replaced. Each backup still runs and makes its snapshot, status tells the new success,
    the worker never restarts, and the record's trouble is said once."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("content\n")
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"[daemon]\nrestic = {json.dumps(restic)}\n"
        f"[repositories.local]\nlocation = {json.dumps(str(repository))}\n"
        f"password = {json.dumps(PASSWORD)}\n"
        f'[backups.pictures]\npaths = [{json.dumps(str(data))}]\nrepositories = ["local"]\n'
    )
    daemon = Daemon(config, tmp_path / "daemon")
    record = daemon.state / "backups" / "pictures.json"
    record.mkdir(parents=True)
    with daemon:
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        succeeded = []
        for run in range(2):
            (data / "file").write_text(f"content {run}\n")
            mark = len(daemon.events)
            done = henbackupctl(daemon, "--json", "backup", "pictures")
            assert done.returncode == 0, done.stdout + done.stderr + daemon.report()
            succeeded.append(daemon.wait_for("job.succeeded", since=mark, backup="pictures"))
        status = json.loads(henbackupctl(daemon, "--json", "status").stdout)
        exited = daemon.find("child.exited")  # before the daemon stops its workers
    assert exited == [], daemon.report()
    assert len(daemon.find("child.started", child="pictures")) == 1
    assert len(succeeded) == 2 and all(e["HENBACKUP_SNAPSHOT"] for e in succeeded)
    assert len({e["HENBACKUP_SNAPSHOT"] for e in succeeded}) == 2
    (unsaved,) = daemon.find("status.unsaved")
    assert unsaved["HENBACKUP_BACKUP"] == "pictures"
    assert unsaved["HENBACKUP_ERROR"] == "Is a directory"
    assert unsaved["MESSAGE"].startswith(f"{record}: cannot save the run record (Is a directory)")
    assert unsaved["PRIORITY"] == "4"
    (unreadable,) = daemon.find("job.warning", backup="pictures")
    assert "cannot read the run record" in unreadable["MESSAGE"]
    (entry,) = [b for b in status["backups"] if b["name"] == "pictures"]
    (row,) = entry["repositories"]
    assert (row["result"], row["snapshot"]) == ("succeeded", succeeded[-1]["HENBACKUP_SNAPSHOT"])
    assert record.is_dir()


def read_only_python(base: Path, directory: Path) -> Path:
    """An interpreter that runs in a private mount namespace where `directory` is mounted
    read-only (root ignores file modes, not EROFS); nothing outside sees the mount."""
    wrapper = base / "python-read-only-state"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec unshare -m --propagation private sh -c \'mount --bind -o ro "{directory}"'
        f' "{directory}" && exec "{sys.executable}" "$@"\' sh "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_a_read_only_state_directory_never_stops_the_backups(
    restic, repository, tmp_path, monkeypatch
):
    """The worker cannot save its run record, the master its job results: backups run all
    the same, status and metrics tell them, and each process says so once."""
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "henbackup.toml"
    config.write_text(
        f"[daemon]\nrestic = {json.dumps(restic)}\n"
        f"[repositories.local]\nlocation = {json.dumps(str(repository))}\n"
        f"password = {json.dumps(PASSWORD)}\n"
        f'[backups.pictures]\npaths = [{json.dumps(str(data))}]\nrepositories = ["local"]\n'
    )
    daemon = Daemon(config, tmp_path / "daemon")
    monkeypatch.setattr(sys, "executable", str(read_only_python(tmp_path, daemon.state)))
    with daemon:
        daemon.wait_worker("pictures", lambda w: w["state"] == "running")
        for run in range(3):
            (data / "file").write_text(f"content {run}\n")
            mark = len(daemon.events)
            done = henbackupctl(daemon, "backup", "pictures")
            assert done.returncode == 0, done.stdout + done.stderr + daemon.report()
            daemon.wait_for("job.succeeded", since=mark, backup="pictures")
        status = json.loads(henbackupctl(daemon, "--json", "status").stdout)
        exited = daemon.find("child.exited")
    assert exited == [], daemon.report()
    unsaved = {e.get("HENBACKUP_BACKUP"): e for e in daemon.find("status.unsaved")}
    assert len(daemon.find("status.unsaved")) == 2 and set(unsaved) == {None, "pictures"}
    assert unsaved["pictures"]["MESSAGE"].startswith(
        f"{daemon.state}/backups/pictures.json: cannot save the run record (Read-only file system)"
    )
    assert unsaved[None]["MESSAGE"] == (
        f"{daemon.state}/status.json: cannot keep the job results (Read-only file system)"
    )
    assert {e["HENBACKUP_ERROR"] for e in unsaved.values()} == {"Read-only file system"}
    (entry,) = [b for b in status["backups"] if b["name"] == "pictures"]
    (row,) = entry["repositories"]
    assert row["result"] == "succeeded" and row["last_success"] == row["last_attempt"]
    assert list(daemon.state.iterdir()) == []


# A worker's triggers on a read-only state directory (a bind mount in a private mount
# namespace: root ignores file modes, not EROFS). One run starts and succeeds: it must not
# raise, it is said once, and the schedule counts from that success (not from the record
# on disk, which would make it run again and again).
READ_ONLY_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from henbackup.config.model import Backup, Interval
    from henbackup.loop import Loop
    from henbackup.worker.triggers import backup_triggers
    state, said, asked = Path(sys.argv[1]), [], []
    emit = lambda kind, message, **fields: said.append([kind, fields.get("error")])
    backup = Backup("pictures", ("/nowhere",), ("local",), schedule=(Interval(3600, "1h"),))
    triggers = backup_triggers(backup, Loop(), state, emit, lambda *a: asked.append(a[0]))
    triggers.start()
    for run in range(2):
        triggers.job_started("backup")
        triggers.job_finished("backup", True)
    print(json.dumps({"said": said, "next_in": triggers.next_run() - time.time()}))
    """
)


def test_a_read_only_state_directory_never_stops_a_worker(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    mount = f'mount --bind -o ro "{state}" "{state}" && exec "{sys.executable}" -c "$0" "$@"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, READ_ONLY_SCRIPT, state],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["said"] == [["status.unsaved", "Read-only file system"]]
    assert 3000 < report["next_in"] <= 3600
    assert list(state.iterdir()) == []


# --- an undecodable file name in an event, under journald -------------------------------------

# The watcher in a user namespace whose inotify watch limit is low (see test_watch.py), on a
# tree whose directory name is not UTF-8: its news reaches the worker's triggers through a
# channel, and their watch.limit event names that directory.
LIMIT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from henbackup import channel
    from henbackup.channel import Channel
    from henbackup.config.model import Backup, Watch
    from henbackup.loop import Loop
    from henbackup.observe.events import Emitter
    from henbackup.worker.triggers import backup_triggers
    from henbackup.worker.watching import Watching
    root, state = sys.argv[1], sys.argv[2]
    backup = Backup("pictures", (root,), ("local",), watch=Watch(1.0, 5.0))
    loop, (master, child) = Loop(), Channel.pair()
    watching = Watching(loop, child)
    watching.watch(channel.Watch("pictures", (root,)))
    triggers = backup_triggers(backup, loop, state, Emitter(), lambda *a: None)
    triggers.start()
    (news,) = master.receive(print)
    triggers.watch_news(news.changes, news.overflow, news.limit)
    print("the worker goes on:", watching.watchers["pictures"].active)
    """
)


def test_an_undecodable_path_in_a_journald_event_does_not_crash_the_worker(
    systemd_harness, tmp_path
):
    root = tmp_path / "root"
    odd = os.fsencode(root) + b"/caf\xe9-latin1"
    for i in range(30):
        os.makedirs(odd + b"/d%02d" % i)
    limited = 'echo 20 > /proc/sys/user/max_inotify_watches && exec "$0" "$@"'
    argv = ["unshare", "--user", "--map-root-user", "sh", "-c", limited, sys.executable]
    done = systemd_harness.run(
        [*argv, "-c", LIMIT_SCRIPT, str(root), str(tmp_path / "state")],
        env={"PYTHONPATH": str(ROOT), "HENBACKUP_EVENTS": "journal"},
    )
    assert (done.returncode, done.stdout) == (0, "the worker goes on: False\n"), done.stderr
    (event,) = systemd_harness.wait_journal({"HENBACKUP_EVENT": "watch.limit"})
    assert event["HENBACKUP_BACKUP"] == "pictures"
    assert event["MESSAGE_ID"] == "c0cb6e2203c64ecfa1d7f753f2c56ef5"
    assert event["PRIORITY"] == "4"
    # Text, not a blob: the byte that is not UTF-8 is shown as \xNN, the rest as it is.
    assert f" while watching {root}/caf\\xe9-latin1/d" in event["MESSAGE"], event["MESSAGE"]
