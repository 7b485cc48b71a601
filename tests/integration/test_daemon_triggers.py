"""The daemon's triggers end to end (henbackup.toml(5)): `henbackup run` as a subprocess, real
restic, local repositories, real inotify, the real state directory.

Issue 4's "done when": pictures are backed up a few seconds after files change and at least
daily, and a daemon restart causes neither a double nor a missed run.

Every test reads the daemon's events (JSON lines on stderr) as they come, with deadlines;
nothing waits a fixed time to synchronise. The only fixed waits are the windows in which
something must NOT happen, sized from the configured waits (e.g. 2 x wait_max), and the
pace of the writes that simulate a busy camera.

Which restic: the triggers, the debounce and the state are the daemon's own and do not
depend on restic's version (the engine's behaviour under both versions is
test_restic_engine.py's subject), so those tests run once, on restic 0.14, Debian 12's
package, the one the target machines run. The test of a daemon stopped in the middle of a
backup runs on both: whether restic leaves the repository unlocked when interrupted is
restic's own behaviour, which may change from one version to the next.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
from daemon_helpers import (
    PASSWORD,
    Daemon,
    henbackupctl,
    make_data,
    ok,
    read_state,
    restic_command,
    restic_json,
    tree,
    when,
    write_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One restic version is enough where the version does not matter (see the module docstring).
ONE_RESTIC = pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)

HOST = "testhost"
DAY = 86400.0
TOLERANCE = 0.05  # clock reading, timer granularity: how early an event may look
MARGIN = 1.5  # how late the daemon may act on a busy 2-core machine


# --- set-up -------------------------------------------------------------------------------


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_config(
    tmp_path: Path, restic: str, repository: Path, backups: dict[str, dict[str, object]]
) -> Path:
    """A configuration with one repository, `local`, and these backups to it; each backup's
    settings are TOML keys: lists of strings, strings, or {wait_min, wait_max} for watch."""
    lines = [
        "[daemon]",
        f"restic = {json.dumps(restic)}",
        f'hostname = "{HOST}"',
        "",
        "[repositories.local]",
        f"location = {json.dumps(str(repository))}",
        f"password = {json.dumps(PASSWORD)}",
    ]
    for name, settings in backups.items():
        lines += ["", f"[backups.{name}]", 'repositories = ["local"]']
        for key, value in settings.items():
            if isinstance(value, list):
                text = toml_list(value)
            elif isinstance(value, dict):
                text = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
            else:
                text = json.dumps(value)
            lines.append(f"{key} = {text}")
    config = tmp_path / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def pick(event: dict[str, str], *names: str) -> dict[str, str | None]:
    """The event's HENBACKUP_<NAME> fields among `names`, for one exact comparison."""
    return {name: event.get(f"HENBACKUP_{name}") for name in names}


def snapshot_ids(snapshots: object) -> list[set[str]]:
    assert isinstance(snapshots, list)
    return [{s["id"], s["short_id"]} for s in snapshots]


def restore(restic: str, repository: Path, snapshot: str, target: Path, path: Path) -> dict:
    """The files of `path` as restored from `snapshot` into `target` (see `tree`)."""
    restic_command(restic, repository, "restore", snapshot, "--target", str(target))
    return tree(target / path.relative_to(path.anchor))


def dump(restic: str, repository: Path, snapshot: str, path: Path) -> bytes:
    """A file's content in a snapshot."""
    return restic_command(restic, repository, "dump", snapshot, str(path)).stdout


def finished(daemon: Daemon, name: str) -> dict[str, object]:
    """Wait until the worker of `name` has no job running and plans its next run after more
    than an hour (so no run is due); returns its status entry."""
    return daemon.wait_worker(
        name,
        lambda w: w["job"] == "idle" and (w["next_run"] or 0) > time.time() + 3600,
    )


def quiet_for(daemon: Daemon, seconds: float, since: int) -> None:
    """Assert that no trigger fires in the next `seconds`."""
    daemon.collect(seconds)
    late = daemon.find("trigger.fired", since=since)
    assert not late, f"unexpected trigger(s):\n{daemon.report()}"


def clean_exit(daemon: Daemon) -> None:
    """Stop the daemon; it must exit 0, leave no process behind and print no traceback."""
    code = daemon.stop()
    assert code == 0, f"exit {code}\n{daemon.report()}"
    assert daemon.leftovers == []
    assert daemon.noise == [], daemon.report()


# --- schedule: startup, missed runs, restarts -----------------------------------------------


@ONE_RESTIC
def test_a_never_run_backup_runs_at_startup_and_a_restart_does_not_repeat_it(
    restic, repository, tmp_path
):
    data = make_data(tmp_path / "pictures")
    config = write_config(
        tmp_path, restic, repository, {"pictures": {"paths": [str(data)], "schedule": ["1d"]}}
    )
    daemon = Daemon(config, tmp_path)
    with daemon:
        fired = daemon.wait_for("trigger.fired", backup="pictures")
        assert pick(fired, "TRIGGER", "OPERATION", "REASON") == {
            "TRIGGER": "startup",
            "OPERATION": "backup",
            "REASON": "every 1d, never succeeded",
        }
        done = daemon.wait_for("job.succeeded", operation="backup", backup="pictures", timeout=60)
        assert pick(done, "TRIGGER", "REPOSITORY") == {"TRIGGER": "startup", "REPOSITORY": "local"}
        entry = finished(daemon, "pictures")
        state = read_state(daemon.state, "pictures")
        started = daemon.wait_for("job.started", operation="backup")
        # The success counts from the run's start: between the trigger and the job's start.
        assert when(fired) <= state["last_success"] <= when(started)
        assert entry["next_run"] == pytest.approx(state["last_success"] + DAY, abs=1e-3)
        clean_exit(daemon)
    assert len(daemon.find("trigger.fired")) == 1
    assert len(daemon.find("job.started", operation="backup")) == 1

    snapshots = restic_json(restic, repository, "snapshots")
    assert len(snapshots) == 1
    assert done["HENBACKUP_SNAPSHOT"] in snapshot_ids(snapshots)[0]
    assert snapshots[0]["tags"] == ["backup-pictures"]
    assert snapshots[0]["hostname"] == HOST
    assert snapshots[0]["paths"] == [str(data)]

    # Restarted a moment later: the state survived, nothing is due for a day.
    again = Daemon(config, tmp_path)
    with again:
        entry = again.wait_triggers_armed("pictures")
        assert entry["next_run"] == pytest.approx(state["last_success"] + DAY, abs=1e-3)
        ctl = henbackupctl(again, "--json", "status")
        assert ctl.returncode == 0, ctl.stderr
        reply = json.loads(ctl.stdout)
        (backup,) = reply["backups"]
        assert {k: backup[k] for k in ("name", "worker")} == {
            "name": "pictures",
            "worker": "running",
        }
        assert [row["state"] for row in backup["repositories"]] == ["idle"]
        assert backup["next_run"] == pytest.approx(state["last_success"] + DAY, abs=1e-3)
        assert reply["status"] == "1 backup; idle; next: pictures in 23 h"
        quiet_for(again, 1.0, since=0)
        clean_exit(again)
    assert again.find("job.started") == []
    assert read_state(again.state, "pictures") == state
    assert len(restic_json(restic, repository, "snapshots")) == 1


@ONE_RESTIC
def test_runs_missed_while_down_happen_once_at_start_and_due_ones_on_time(
    restic, repository, tmp_path
):
    """pictures ("1d") and documents (daily cron) last succeeded two days ago: one run each
    at start, not one per missed day. music's day ends a few seconds after the start: it
    runs then, as a scheduled run, not at startup."""
    names = ("pictures", "documents", "music")
    paths = {name: make_data(tmp_path / name) for name in names}
    hour = (time.localtime().tm_hour + 12) % 24  # the next cron run is far from now
    cron = f"0 {hour} * * *"
    schedules = {"pictures": ["1d"], "documents": [cron], "music": ["1d"]}
    config = write_config(
        tmp_path,
        restic,
        repository,
        {n: {"paths": [str(paths[n])], "schedule": schedules[n]} for n in names},
    )
    daemon = Daemon(config, tmp_path)
    now = time.time()
    write_state(daemon.state, "pictures", now - 2 * DAY)
    write_state(daemon.state, "documents", now - 2 * DAY)
    music_due = now + 5.0  # late enough that a slow start still finds it not yet due
    write_state(daemon.state, "music", music_due - DAY)
    with daemon:
        entries = {}
        for name in names:
            daemon.wait_for("job.succeeded", operation="backup", backup=name, timeout=60)
            entries[name] = finished(daemon, name)
        quiet_for(daemon, 0.5, since=len(daemon.events))
        clean_exit(daemon)

    fired = {name: daemon.find("trigger.fired", backup=name) for name in names}
    assert {name: len(events) for name, events in fired.items()} == dict.fromkeys(names, 1)
    assert pick(fired["pictures"][0], "TRIGGER", "REASON") == {
        "TRIGGER": "startup",
        "REASON": "every 1d, missed while the daemon was down",
    }
    assert pick(fired["documents"][0], "TRIGGER", "REASON") == {
        "TRIGGER": "startup",
        "REASON": f'cron "{cron}", missed while the daemon was down',
    }
    assert pick(fired["music"][0], "TRIGGER", "REASON") == {
        "TRIGGER": "schedule",
        "REASON": "every 1d",
    }
    assert music_due - TOLERANCE <= when(fired["music"][0]) <= music_due + MARGIN
    started = daemon.find("job.started", operation="backup")
    assert sorted(e["HENBACKUP_BACKUP"] for e in started) == sorted(names)

    for name in ("pictures", "music"):
        state = read_state(daemon.state, name)
        assert state["last_success"] >= when(fired[name][0])
        assert entries[name]["next_run"] == pytest.approx(state["last_success"] + DAY, abs=1e-3)
    cron_next = entries["documents"]["next_run"]
    assert now < cron_next <= now + DAY + 3600  # 3600: a DST change on the way
    assert time.localtime(cron_next)[3:6] == (hour, 0, 0)

    snapshots = restic_json(restic, repository, "snapshots")
    assert sorted(s["tags"][0] for s in snapshots) == sorted(f"backup-{n}" for n in names)


def test_a_daemon_stopped_during_a_backup_leaves_the_repository_unlocked_and_reruns_it(
    restic, repository, tmp_path
):
    """SIGTERM in the middle of a (slow) backup: exit 0, restic interrupted cleanly (no
    stale lock: the next backup works), neither success nor failure recorded. The daemon's
    stop is no failure of the backup: at the restart it runs again at once, not RETRY_AFTER
    later (schedule.py)."""
    data = make_data(tmp_path / "pictures", big=1 << 20)  # ~2 s at 512K/s
    config = write_config(
        tmp_path,
        restic,
        repository,
        {"pictures": {"paths": [str(data)], "schedule": ["1d"], "upload_limit": "512K"}},
    )
    daemon = Daemon(config, tmp_path)
    with daemon:
        started = daemon.wait_for("job.started", operation="backup", backup="pictures")
        assert daemon.pump_until(lambda: restic_backup_running(daemon.pid), 15, step=0.05), (
            "restic backup never started\n" + daemon.report()
        )
        stopping = time.monotonic()
        clean_exit(daemon)
        assert time.monotonic() - stopping < 10
    job = started["HENBACKUP_JOB"]
    cancelled = daemon.wait_for("job.cancelled", job=job)
    assert pick(cancelled, "BACKUP", "REPOSITORY", "TRIGGER") == {
        "BACKUP": "pictures",
        "REPOSITORY": "local",
        "TRIGGER": "startup",
    }
    assert daemon.find("job.succeeded") == []
    assert restic_command(restic, repository, "list", "locks", "--no-lock").stdout == b""
    state = read_state(daemon.state, "pictures")
    assert state["last_success"] is None and state.get("last_failure") is None, state
    assert when(daemon.wait_for("trigger.fired")) <= state["last_attempt"] <= when(started)

    again = Daemon(config, tmp_path)
    with again:
        fired = again.wait_for("trigger.fired", backup="pictures")
        assert pick(fired, "TRIGGER", "REASON") == {
            "TRIGGER": "startup",
            "REASON": "every 1d, its last run was interrupted",
        }
        done = again.wait_for("job.succeeded", operation="backup", timeout=60)
        assert done["HENBACKUP_TRIGGER"] == "startup"
        entry = finished(again, "pictures")
        clean_exit(again)
    state = read_state(again.state, "pictures")
    assert entry["next_run"] == pytest.approx(state["last_success"] + DAY, abs=1e-3)
    snapshots = restic_json(restic, repository, "snapshots")
    assert len(snapshots) == 1
    assert done["HENBACKUP_SNAPSHOT"] in snapshot_ids(snapshots)[0]


def restic_backup_running(pid: int) -> bool:
    """Whether a `restic backup` runs among the daemon's descendants."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return False
    for child in children:
        try:
            if child.name() == "restic" and "backup" in child.cmdline():
                return True
        except psutil.Error:
            continue
    return False


# --- watch ------------------------------------------------------------------------------------


def watched_config(tmp_path, restic, repository, data, wait_min, wait_max, **more):
    """pictures: backed up on change and at least daily."""
    watch = {"wait_min": wait_min, "wait_max": wait_max}
    settings = {"paths": [str(data)], "schedule": ["1d"], "watch": watch, **more}
    return write_config(tmp_path, restic, repository, {"pictures": settings})


def start_watching(daemon: Daemon) -> int:
    """With a success just recorded (nothing due), start the daemon and wait until its watch
    is on; returns the index of the next event."""
    write_state(daemon.state, "pictures", time.time())
    daemon.start()
    daemon.wait_triggers_armed("pictures")
    return len(daemon.events)


@ONE_RESTIC
def test_changes_are_backed_up_once_quiet_for_wait_min(restic, repository, tmp_path):
    data = make_data(tmp_path / "pictures")
    config = watched_config(tmp_path, restic, repository, data, "1s", "4s")
    daemon = Daemon(config, tmp_path)
    try:
        mark = start_watching(daemon)
        (data / "new.jpg").write_bytes(os.urandom(50_000))
        with (data / "notes.txt").open("a") as notes:
            notes.write("second line\n")
        (data / "2024").mkdir()
        (data / "2024" / "beach.jpg").write_bytes(os.urandom(20_000))
        last_change = time.time()

        fired = daemon.wait_for("trigger.fired", since=mark, timeout=15)
        assert pick(fired, "TRIGGER", "BACKUP", "OPERATION") == {
            "TRIGGER": "watch",
            "BACKUP": "pictures",
            "OPERATION": "backup",
        }
        assert re.fullmatch(r"[1-9][0-9]* changes?", fired["HENBACKUP_REASON"])
        assert last_change + 1.0 - TOLERANCE <= when(fired) <= last_change + 1.0 + MARGIN
        done = daemon.wait_for("job.succeeded", since=mark, operation="backup", timeout=60)
        assert pick(done, "TRIGGER", "BACKUP", "REPOSITORY") == {
            "TRIGGER": "watch",
            "BACKUP": "pictures",
            "REPOSITORY": "local",
        }
        clean_exit(daemon)
    finally:
        daemon.stop()
    assert len(daemon.find("trigger.fired")) == 1

    snapshots = restic_json(restic, repository, "snapshots")
    assert len(snapshots) == 1
    assert done["HENBACKUP_SNAPSHOT"] in snapshot_ids(snapshots)[0]
    assert snapshots[0]["tags"] == ["backup-pictures"]
    restored = restore(restic, repository, done["HENBACKUP_SNAPSHOT"], tmp_path / "restored", data)
    assert restored == tree(data)
    assert "2024/beach.jpg" in restored


@ONE_RESTIC
def test_continuous_changes_start_a_backup_wait_max_after_the_first(restic, repository, tmp_path):
    wait_min, wait_max = 1.0, 3.0
    data = make_data(tmp_path / "pictures")
    config = watched_config(tmp_path, restic, repository, data, "1s", "3s")
    daemon = Daemon(config, tmp_path)
    log = data / "camera.log"
    try:
        mark = start_watching(daemon)
        # A change every 200 ms (never quiet for wait_min), for 1 s longer than wait_max;
        # the events are read meanwhile.
        first_change = time.time()
        writes = 0
        with log.open("a") as stream:
            while True:
                stream.write(f"line {writes}\n")
                stream.flush()
                last_change = time.time()
                writes += 1
                next_write = first_change + writes * 0.2
                if next_write >= first_change + wait_max + 1.0:
                    break
                while (left := next_write - time.time()) > 0:
                    daemon.pump(left)

        first = daemon.wait_for("trigger.fired", since=mark)
        assert pick(first, "TRIGGER", "BACKUP") == {"TRIGGER": "watch", "BACKUP": "pictures"}
        assert (
            first_change + wait_max - TOLERANCE <= when(first) <= first_change + wait_max + MARGIN
        )
        assert when(first) < last_change  # capped by wait_max while changes still came
        # The writes after its start leave exactly one follow-up, once they stop.
        job = daemon.wait_for("job.started", since=mark, operation="backup")
        ended = daemon.wait_for("job.succeeded", job=job["HENBACKUP_JOB"], timeout=60)
        assert daemon.pump_until(lambda: len(daemon.find("trigger.fired", since=mark)) > 1, 15)
        follow_up = daemon.find("trigger.fired", since=mark)[1]
        assert follow_up["HENBACKUP_TRIGGER"] == "watch"
        assert when(follow_up) >= max(last_change + wait_min, when(ended)) - TOLERANCE
        after = daemon.events.index(follow_up)
        second = daemon.wait_for("job.started", since=after, operation="backup")
        done = daemon.wait_for("job.succeeded", job=second["HENBACKUP_JOB"], timeout=60)
        finished(daemon, "pictures")
        clean_exit(daemon)
    finally:
        daemon.stop()
    assert len(daemon.find("trigger.fired")) == 2
    assert len(daemon.find("job.started", operation="backup")) == 2
    assert dump(restic, repository, done["HENBACKUP_SNAPSHOT"], log) == log.read_bytes()


@ONE_RESTIC
def test_a_change_during_a_backup_causes_exactly_one_follow_up(restic, repository, tmp_path):
    """The startup run is slow (1 MiB at 512K/s); files change while it runs."""
    wait_max = 1.5
    data = make_data(tmp_path / "pictures", big=1 << 20)
    config = watched_config(
        tmp_path, restic, repository, data, "500ms", "1500ms", upload_limit="512K"
    )
    daemon = Daemon(config, tmp_path)
    with daemon:
        started = daemon.wait_for("job.started", operation="backup", backup="pictures")
        assert started["HENBACKUP_TRIGGER"] == "startup"
        (data / "during.jpg").write_bytes(os.urandom(10_000))
        with (data / "notes.txt").open("a") as notes:
            notes.write("written during the backup\n")
        (data / "album" / "dog.jpg").write_bytes(os.urandom(10_000))
        changed = time.time()
        first = daemon.wait_for("job.succeeded", job=started["HENBACKUP_JOB"], timeout=60)
        assert when(first) > changed, "the backup ended before the changes: make it slower"

        follow_up = daemon.wait_for("trigger.fired", trigger="watch", timeout=15)
        assert pick(follow_up, "BACKUP", "OPERATION") == {
            "BACKUP": "pictures",
            "OPERATION": "backup",
        }
        assert when(follow_up) >= when(first)
        done = daemon.wait_for("job.succeeded", operation="backup", trigger="watch", timeout=60)
        finished(daemon, "pictures")
        quiet_for(daemon, 2 * wait_max, since=len(daemon.events))
        clean_exit(daemon)

    fired = daemon.find("trigger.fired")
    assert [e["HENBACKUP_TRIGGER"] for e in fired] == ["startup", "watch"]
    assert len(daemon.find("job.started", operation="backup")) == 2
    snapshots = restic_json(restic, repository, "snapshots")
    assert len(snapshots) == 2
    snapshot = done["HENBACKUP_SNAPSHOT"]
    for path in (data / "during.jpg", data / "notes.txt", data / "album" / "dog.jpg"):
        assert dump(restic, repository, snapshot, path) == path.read_bytes()


@ONE_RESTIC
def test_changes_to_excluded_files_alone_trigger_nothing(restic, repository, tmp_path):
    wait_min, wait_max = 0.5, 1.5
    data = make_data(tmp_path / "pictures")
    (data / "old.tmp").write_text("scratch\n")
    config = watched_config(
        tmp_path, restic, repository, data, "500ms", "1500ms", excludes=["*.tmp"]
    )
    daemon = Daemon(config, tmp_path)
    try:
        mark = start_watching(daemon)
        (data / "edit.tmp").write_text("draft\n")
        with (data / "edit.tmp").open("a") as draft:
            draft.write("more\n")
        (data / "edit.tmp").rename(data / "renamed.tmp")
        (data / "old.tmp").unlink()
        (data / "scratch.tmp").mkdir()  # an excluded directory: not watched, nor its content
        (data / "scratch.tmp" / "inside.jpg").write_bytes(os.urandom(1000))
        (data / "album" / "thumb.tmp").write_bytes(os.urandom(1000))
        quiet_for(daemon, 2 * wait_max + 1.0, since=mark)

        # The watch is on: a file that is not excluded triggers a backup without the others.
        (data / "keep.jpg").write_bytes(os.urandom(1000))
        changed = time.time()
        fired = daemon.wait_for("trigger.fired", since=mark, timeout=15)
        assert fired["HENBACKUP_TRIGGER"] == "watch"
        assert changed + wait_min - TOLERANCE <= when(fired) <= changed + wait_min + MARGIN
        done = daemon.wait_for("job.succeeded", operation="backup", timeout=60)
        clean_exit(daemon)
    finally:
        daemon.stop()
    assert len(daemon.find("trigger.fired")) == 1
    restored = restore(restic, repository, done["HENBACKUP_SNAPSHOT"], tmp_path / "restored", data)
    assert sorted(restored) == ["album/cat.jpg", "keep.jpg", "notes.txt"]


@ONE_RESTIC
def test_changes_seen_before_a_stop_are_backed_up_at_the_next_start(restic, repository, tmp_path):
    data = make_data(tmp_path / "pictures")
    config = watched_config(tmp_path, restic, repository, data, "30s", "60s")
    first = Daemon(config, tmp_path)
    try:
        start_watching(first)
        (data / "late.jpg").write_bytes(os.urandom(10_000))
        saved = first.pump_until(
            lambda: read_state(first.state, "pictures").get("changed_since"), 10
        )
        assert saved, "the change was not recorded"
        clean_exit(first)
    finally:
        first.stop()
    assert first.find("trigger.fired") == []  # stopped well before wait_min

    second = Daemon(config, tmp_path)
    try:
        second.start()
        fired = second.wait_for("trigger.fired", timeout=15)
        assert pick(fired, "TRIGGER", "REASON") == {
            "TRIGGER": "startup",
            "REASON": "changes seen before the daemon stopped",
        }
        done = second.wait_for("job.succeeded", operation="backup", timeout=60)
        clean_exit(second)
    finally:
        second.stop()
    assert len(second.find("trigger.fired")) == 1
    assert (
        dump(restic, repository, done["HENBACKUP_SNAPSHOT"], data / "late.jpg")
        == (data / "late.jpg").read_bytes()
    )


# --- the watcher: one process, one inotify instance, for every watched backup ----------------


def watcher_process(daemon: Daemon) -> psutil.Process:
    (watcher,) = daemon.named("hbwatch")
    return watcher


@ONE_RESTIC
def test_a_watcher_that_dies_comes_back_and_each_watched_backup_catches_up(
    restic, repository, tmp_path
):
    # What changed while no watcher watched was not seen: once the new watcher watches,
    # the backup runs as after lost events, and later changes are seen again.
    data = make_data(tmp_path / "pictures")
    config = watched_config(tmp_path, restic, repository, data, "1s", "4s")
    daemon = Daemon(config, tmp_path)
    try:
        mark = start_watching(daemon)
        watcher_process(daemon).kill()
        exited = daemon.wait_for("child.exited", since=mark, child="watcher")
        assert exited["HENBACKUP_STATE"] == "backoff", daemon.report()
        lost = daemon.wait_for("watch.overflow", since=mark, backup="pictures", timeout=30)
        fired = daemon.wait_for("trigger.fired", since=mark, timeout=15)
        assert pick(fired, "TRIGGER", "REASON") == {
            "TRIGGER": "watch",
            "REASON": "lost events (inotify queue overflow)",
        }
        assert when(fired) >= when(lost)
        daemon.wait_for("job.succeeded", since=mark, operation="backup", timeout=60)
        finished(daemon, "pictures")
        again = len(daemon.events)
        (data / "after.jpg").write_bytes(os.urandom(1000))
        fired = daemon.wait_for("trigger.fired", since=again, timeout=15)
        assert re.fullmatch(r"[1-9][0-9]* changes?", fired["HENBACKUP_REASON"])
        daemon.wait_for("job.succeeded", since=again, operation="backup", timeout=60)
        clean_exit(daemon)
    finally:
        daemon.stop()
    assert len(daemon.find("child.started", child="watcher")) == 2


@ONE_RESTIC
def test_a_watcher_that_gives_up_shows_in_the_status_and_backups_keep_their_schedule(
    restic, repository, tmp_path
):
    # Killed each time soon after it started, the watcher is left alone at the fifth quick
    # failure (master/states.py Policy): `henbackupctl status` says so, not only child.exited;
    # until a reload.
    data = make_data(tmp_path / "pictures")
    config = watched_config(tmp_path, restic, repository, data, "1s", "4s")
    daemon = Daemon(config, tmp_path)
    gave_up = "watcher failed: watched backups run on schedule only"
    try:
        start_watching(daemon)
        assert daemon.status()["daemon"]["watcher"] == "running"
        started = daemon.wait_for("child.started", child="watcher")
        for _ in range(5):  # 1 + 2 + 4 + 8 s of backoff in between
            since = len(daemon.events)
            os.kill(int(started["HENBACKUP_PID"]), signal.SIGKILL)
            exited = daemon.wait_for("child.exited", since=since, child="watcher")
            if exited["HENBACKUP_STATE"] == "fatal":
                break
            started = daemon.wait_for("child.started", since=since, child="watcher")
        assert pick(exited, "STATE", "CHILD_KIND") == {"STATE": "fatal", "CHILD_KIND": "watcher"}
        assert "HENBACKUP_BACKUP" not in exited
        status = daemon.status()
        assert status["daemon"]["watcher"] == "fatal"
        assert f"; {gave_up}; next: pictures in " in status["status"], status["status"]
        assert ok(henbackupctl(daemon, "status")).splitlines()[0] == status["status"]
        pictures = finished(daemon, "pictures")  # its worker runs: its schedule holds
        assert pictures["state"] == "running"
        assert not daemon.named("hbwatch")
        # A reload gives it another try; what changed while none watched is backed up.
        (data / "unseen.jpg").write_bytes(os.urandom(1000))
        since = len(daemon.events)
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_for("child.started", since=since, child="watcher")
        fired = daemon.wait_for("trigger.fired", since=since, timeout=15)
        assert fired["HENBACKUP_REASON"] == "lost events (inotify queue overflow)"
        daemon.wait_for("job.succeeded", since=since, operation="backup", timeout=60)
        finished(daemon, "pictures")
        status = daemon.status()
        assert status["daemon"]["watcher"] == "running" and gave_up not in status["status"]
        clean_exit(daemon)
    finally:
        daemon.stop()
    # its start, four restarts, the reload's: counted from the first event, as the watcher's
    # start may come before or after the worker said its triggers were armed
    assert len(daemon.find("child.started", child="watcher")) == 6


@ONE_RESTIC
def test_a_reload_watches_a_new_backup_and_no_more_a_removed_one(restic, repository, tmp_path):
    # The watcher is not restarted by a reload: it is told what to watch anew, and no more.
    pictures, music = make_data(tmp_path / "pictures"), make_data(tmp_path / "music")
    watch = {"wait_min": "1s", "wait_max": "4s"}
    config = watched_config(tmp_path, restic, repository, pictures, "1s", "4s")
    daemon = Daemon(config, tmp_path)
    try:
        write_state(daemon.state, "music", time.time())
        start_watching(daemon)
        watcher = watcher_process(daemon).pid
        settings = {"schedule": ["1d"], "watch": watch}
        write_config(tmp_path, restic, repository, {"music": {"paths": [str(music)], **settings}})
        mark = len(daemon.events)
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_for("config.reloaded", since=mark)
        daemon.wait_triggers_armed("music")  # its paths are watched
        assert os.stat(pictures).st_ino not in daemon.watched_inodes()
        (music / "new.flac").write_bytes(os.urandom(1000))
        fired = daemon.wait_for("trigger.fired", since=mark, timeout=15)
        assert pick(fired, "TRIGGER", "BACKUP") == {"TRIGGER": "watch", "BACKUP": "music"}
        daemon.wait_for("job.succeeded", since=mark, operation="backup", timeout=60)
        assert watcher_process(daemon).pid == watcher
        clean_exit(daemon)
    finally:
        daemon.stop()
