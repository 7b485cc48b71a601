"""The master's loop goes on after an internal error, or a malformed message from a worker,
and says so in the journal."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from henbackup.channel import (
    Accepted,
    Channel,
    Heartbeat,
    JobState,
    Ready,
    Refused,
    Unwatch,
    Watch,
    WatchNews,
)
from henbackup.config.load import load_config
from henbackup.master.specs import WATCHER, worker_specs
from henbackup.master.states import Child, ChildState
from henbackup.master.supervisor import Master, Supervised
from henbackup.observe.events import ERR
from henbackup.observe.notify import Notifier
from henbackup.worker.spec import WorkerSpec
from tests.unit.master.stand_in import Conversation

CONFIG = """\
[repositories.local]
location = "{tmp}/local"
password = "not a secret"
"""


def make_master(tmp_path: Path, emit: Any) -> Master:
    path = tmp_path / "henbackup.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    return Master(path, load_config(path, env={}), emit, lambda *_: 0)


def bug() -> None:
    raise KeyError("backup:gone")


def test_an_internal_error_is_an_event_with_its_traceback_and_the_loop_goes_on(
    tmp_path: Path, events: Any
) -> None:
    master = make_master(tmp_path, events)
    ran = []
    master.loop.call_later(0, bug)
    master.loop.call_later(0, lambda: ran.append("next"))
    master.loop.run_once()
    assert ran == ["next"]
    (event,) = events.recorded
    fields = dict(event.fields)
    assert (event.kind, event.priority) == ("daemon.error", ERR)
    assert fields["HENBACKUP_SOURCE"] == "timer (bug)"
    assert fields["HENBACKUP_ERROR"] == "KeyError: 'backup:gone'"
    assert event.message == (
        "internal error in timer (bug), henbackup goes on: KeyError: 'backup:gone'"
    )
    trace = fields["HENBACKUP_TRACEBACK"]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert 'raise KeyError("backup:gone")' in trace and trace.endswith("KeyError: 'backup:gone'\n")
    master.loop.close()


def test_with_no_way_to_write_an_event_the_traceback_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def emit(kind: str, message: str, **fields: Any) -> Any:
        raise BrokenPipeError(32, "Broken pipe")  # stderr's reader is gone, say

    master = make_master(tmp_path, emit)
    master.loop.call_later(0, bug)
    master.loop.run_once()
    assert capsys.readouterr().err.endswith("KeyError: 'backup:gone'\n")
    master.loop.close()


def test_a_malformed_message_from_a_worker_is_one_error_event_and_the_rest_is_heard(
    tmp_path: Path, events: Any
) -> None:
    """A worker (a bug in it) sends a line of the wrong shape: the master says so once, in
    daemon.error, and goes on with what the worker says next (here: that it is ready)."""

    def worker_body(spec: WorkerSpec, config: Any, channel: Channel) -> int:
        channel.sock.sendall(b'{"type": "job", "state": "asleep"}\n')
        channel.send(Ready())
        channel.sock.settimeout(30)
        channel.sock.recv(1)  # until the master closes its end
        return 0

    master = make_master(tmp_path, events)
    master.worker_body = worker_body
    master._add(WorkerSpec("repository", "local", ()))
    supervised = master.children["repository:local"]
    deadline = time.monotonic() + 30
    while supervised.child.state is not ChildState.RUNNING:
        assert time.monotonic() < deadline, "the worker's Ready was never heard"
        master.loop.run_once()
    errors = [event for event in events.recorded if event.kind == "daemon.error"]
    assert [dict(event.fields)["HENBACKUP_ERROR"] for event in errors] == [
        'ProtocolError: malformed message: \'state\' of job must be "running" or "idle",'
        " not a string"
    ]
    assert dict(errors[0].fields)["HENBACKUP_SOURCE"] == "worker local"
    assert supervised.process is not None
    os.killpg(supervised.process.pid, signal.SIGKILL)
    while "repository:local" in master.children and supervised.process is not None:
        assert time.monotonic() < deadline, "the worker was never reaped"
        master.loop.run_once()
    master.loop.close()


def test_a_workers_news_remakes_its_own_view_only(tmp_path: Path, events: Any) -> None:
    """At 1,000 workers, each heartbeat or state of one must not remake a thousand views
    (the master's status at scale): the others' views stay the very same objects."""
    master = make_master(tmp_path, events)
    for name in ("one", "two"):
        spec = WorkerSpec("repository", name, ())
        master.children[spec.key] = Supervised(spec, Child(spec.key))
    master._update_status()
    one, two = master.children["repository:one"], master.children["repository:two"]
    before = dict(master.model.workers)
    master._handle(one, Heartbeat())
    assert all(master.model.workers[key] is view for key, view in before.items())
    master._handle(one, JobState("running", next_run=1234.0, operation="check"))
    assert master.model.workers["repository:two"] is before["repository:two"]
    assert (one.running, master.model.workers["repository:one"].running) == (True, True)
    assert master.model.workers["repository:one"].next_run == 1234.0
    assert master.model.status_line().startswith("0 backups; idle; next: one ")
    assert two.running is False
    master.loop.close()


def test_a_request_its_worker_merged_without_following_is_answered_as_no_wait_is(
    tmp_path: Path, events: Any
) -> None:
    master = make_master(tmp_path, events)
    spec = WorkerSpec("backup", "pictures", ())
    supervised = master.children[spec.key] = Supervised(spec, Child(spec.key))
    waiting, other = Conversation(), Conversation()
    master.jobs.clients.add("r00000001", waiting, spec.key)
    master.jobs.clients.add("r00000002", other, spec.key)
    master._handle(supervised, Accepted("backup", ("r00000001",)))
    assert waiting.sent == [
        {"waiting": "r00000001"},
        {"ok": True, "request": "r00000001", "accepted": "backup"},
    ]
    assert (other.sent, list(master.jobs.clients.waiting)) == (
        [{"waiting": "r00000002"}],
        ["r00000002"],
    )
    master.loop.close()


def test_a_request_its_worker_refused_is_answered_failed_with_why(
    tmp_path: Path, events: Any
) -> None:
    master = make_master(tmp_path, events)
    spec = WorkerSpec("backup", "pictures", ())
    supervised = master.children[spec.key] = Supervised(spec, Child(spec.key))
    waiting = Conversation()
    master.jobs.clients.add("r00000001", waiting, spec.key)
    why = "pictures: 16 runs asked by hand already wait; ask later"
    master._handle(supervised, Refused(why, ("r00000001",)))
    assert waiting.sent == [
        {"waiting": "r00000001"},
        {"ok": False, "code": "failed", "error": why, "jobs": []},
    ]
    assert master.jobs.clients.waiting == {}
    master.loop.close()


WATCHED = """\
[repositories.local]
location = "{tmp}/local"
password = "not a secret"

[backups.pictures]
paths = ["{tmp}/pictures"]
repositories = ["local"]
watch = true
excludes = [{excludes}]

[backups.music]
paths = ["{tmp}/music"]
repositories = ["local"]
{music_watch}
"""


def watched_config(tmp_path: Path, excludes: str = "", music_watch: str = "") -> Any:
    path = tmp_path / "henbackup.toml"
    path.write_text(WATCHED.format(tmp=tmp_path, excludes=excludes, music_watch=music_watch))
    return load_config(path, env={})


def listening(master: Master, spec: WorkerSpec) -> Channel:
    """`spec` as a child of `master` whose channel the test reads (no process behind it)."""
    ours, theirs = Channel.pair()
    supervised = Supervised(spec, Child(spec.key))
    supervised.process = SimpleNamespace(channel=ours, pid=0, send=ours.send)  # type: ignore[assignment]
    master.children[spec.key] = supervised
    theirs.sock.settimeout(5)
    return theirs


def test_the_watcher_is_a_child_when_a_backup_is_watched_and_its_news_go_to_that_worker(
    tmp_path: Path, events: Any
) -> None:
    config = watched_config(tmp_path)
    assert WATCHER.key in worker_specs(config)
    master = Master(tmp_path / "henbackup.toml", config, events, lambda *_: 0)
    pictures = listening(master, WorkerSpec("backup", "pictures", ()))
    music = listening(master, WorkerSpec("backup", "music", ()))
    watcher = listening(master, WATCHER)
    master._handle(master.children[WATCHER.key], WatchNews("pictures", changes=2))
    assert pictures.receive(pytest.fail) == [WatchNews("pictures", changes=2)]
    # A reload: pictures's excludes change, music is watched now; then pictures no more.
    reloaded = watched_config(tmp_path, '"*.tmp"', "watch = true")
    master._rewatch(master.config, reloaded)
    pictures_now = Watch("pictures", (f"{tmp_path}/pictures",), ("*.tmp",))
    music_now = Watch("music", (f"{tmp_path}/music",))
    heard = watcher.receive(pytest.fail)
    assert heard == [pictures_now, music_now]
    # The watcher came back: each watched backup's worker hears that events were lost.
    master.config = reloaded
    master._watching_again()
    assert pictures.receive(pytest.fail) == [WatchNews("pictures", overflow=True)]
    assert music.receive(pytest.fail) == [WatchNews("music", overflow=True)]
    # Another reload: pictures is no longer watched.
    only_music = replace(reloaded, backups={"music": reloaded.backups["music"]})
    master._rewatch(reloaded, only_music)
    assert watcher.receive(pytest.fail) == [Unwatch("pictures")]
    master.loop.close()


def test_the_watcher_is_no_worker_in_the_status(tmp_path: Path, events: Any) -> None:
    master = Master(tmp_path / "henbackup.toml", watched_config(tmp_path), events, lambda *_: 0)
    listening(master, WATCHER)
    listening(master, WorkerSpec("backup", "pictures", ()))
    master._update_status()
    assert list(master.model.workers) == ["backup:pictures"]
    master._handle(master.children[WATCHER.key], Heartbeat())
    assert list(master.model.workers) == ["backup:pictures"]
    master.loop.close()


def test_a_watcher_that_gave_up_shows_in_the_status_line_and_in_systemds(
    tmp_path: Path, events: Any
) -> None:
    """FATAL after its last quick failure: before, only a child.exited event said so."""
    path = str(tmp_path / "notify")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(path)
    systemd.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    config = watched_config(tmp_path)
    master = Master(tmp_path / "henbackup.toml", config, events, lambda *_: 0, notifier)
    listening(master, WorkerSpec("backup", "pictures", ()))
    listening(master, WATCHER)
    watcher = master.children[WATCHER.key]
    watcher.child.spawned(4321, master.loop.clock())
    master._update_status()
    assert systemd.recv(4096) == b"STATUS=1 backup; idle"
    assert master.model.watcher == "starting"
    master._handle(watcher, Ready())  # its news: only its own state changed
    assert master.model.watcher == "running"
    watcher.child.quick_failures = master.policy.max_quick_failures - 1
    master._exited(WATCHER.key, 1 << 8)  # exit status 1, once too often
    (exited,) = [e for e in events.recorded if e.kind == "child.exited"]
    fields = dict(exited.fields)
    assert (fields["HENBACKUP_CHILD_KIND"], fields["HENBACKUP_STATE"]) == ("watcher", "fatal")
    assert "HENBACKUP_BACKUP" not in fields
    line = "1 backup; idle; watcher failed: watched backups run on schedule only"
    assert master.model.status_line() == line
    assert systemd.recv(4096) == f"STATUS={line}".encode()
    systemd.close()
    master.loop.close()


def test_a_worker_that_cannot_be_forked_backs_off_and_is_started_at_its_next_try(
    tmp_path: Path, events: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake: os.fork refuses (EAGAIN: a full process table or RLIMIT_NPROC, which root
    cannot be made to meet here). Before, the error left the backup without a worker until
    a reload; now it fails as a worker that died at once, and the next try starts it."""
    master = Master(tmp_path / "henbackup.toml", watched_config(tmp_path), events, lambda *_: 0)
    real_fork = os.fork

    def refused() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refused)
    spec = WorkerSpec("backup", "pictures", ())
    master._add(spec)
    supervised = master.children[spec.key]
    assert (supervised.child.state, supervised.process) == (ChildState.BACKOFF, None)
    (exited,) = events.recorded
    assert exited.kind == "child.exited"
    assert exited.message == (
        "worker pictures could not be started (fork: [Errno 11] Resource temporarily "
        "unavailable); restarting in 1s"
    )
    fields = dict(exited.fields)
    assert fields["HENBACKUP_STATE"] == "backoff"
    assert fields["HENBACKUP_ERROR"] == "[Errno 11] Resource temporarily unavailable"
    assert fields["HENBACKUP_BACKUP"] == "pictures"
    assert "HENBACKUP_PID" not in fields
    monkeypatch.setattr(os, "fork", real_fork)
    master._restart(spec.key)  # what the timer set for restart_at runs
    assert supervised.child.state is ChildState.STARTING
    assert supervised.process is not None
    deadline = time.monotonic() + 10
    while supervised.process is not None and time.monotonic() < deadline:
        master.loop.run_once()  # its body returns at once: reaped, backing off again
    assert supervised.process is None
    assert [e.kind for e in events.recorded] == ["child.exited", "child.started", "child.exited"]
    master.loop.close()


def test_a_reload_while_a_worker_still_stops_for_the_last_one_starts_what_the_config_now_says(
    tmp_path: Path, events: Any
) -> None:
    """Reload 1 changes music, whose worker takes its time to stop; reload 2 comes first.
    Before, the worker's pending replacement (reload 1's music) was started anyway: after a
    reload 2 that removed music (a worker for a backup that is gone, crashing until FATAL),
    or that changed it back (the old definition was compared, so reload 1's ran)."""
    v1 = watched_config(tmp_path)
    v2 = watched_config(tmp_path, music_watch='schedule = ["1h"]')
    master = make_master(tmp_path, events)
    master.config = v1
    for key, spec in worker_specs(v1).items():
        supervised = master.children[key] = Supervised(spec, Child(key))
        supervised.child.spawned(1, 0.0)  # a process that must be asked to stop (none here)
        supervised.child.ready(0.0)
    started: list[WorkerSpec] = []
    master._add = lambda *specs: started.extend(specs)  # type: ignore[method-assign]
    music = master.children["backup:music"]

    def music_exits() -> None:
        music.child.died(master.loop.clock(), master.policy)
        master._after_exit("backup:music", music)

    master._apply(v2)
    master._apply(v1)  # changed back before it stopped
    music_exits()
    assert started == [worker_specs(v1)["backup:music"]]

    music = master.children["backup:music"] = Supervised(started.pop(), Child("backup:music"))
    music.child.spawned(1, 0.0)
    master._apply(v2)
    master._apply(replace(v2, backups={"pictures": v2.backups["pictures"]}))  # then removed
    music_exits()
    assert started == [] and "backup:music" not in master.children

    master.config = v2
    music = Supervised(worker_specs(v2)["backup:music"], Child("backup:music"))
    master.children["backup:music"] = music
    music.child.spawned(1, 0.0)
    master._apply(replace(v2, backups={"pictures": v2.backups["pictures"]}))  # removed
    master._apply(v2)  # and put back, unchanged, before its worker stopped
    music_exits()
    assert started == [worker_specs(v2)["backup:music"]]
    master.loop.close()


def test_a_worker_that_does_not_stop_when_a_reload_asks_is_killed_after_the_stop_timeout(
    tmp_path: Path, events: Any
) -> None:
    """Its loop hangs (SIGTERM unheard): without a deadline it would stay stopping for ever,
    and the backup's new definition never run."""
    master = make_master(tmp_path, events)
    master.stop_timeout = 0.2
    deafness = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    deaf = subprocess.Popen(
        [sys.executable, "-c", f"{deafness}; print(flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert deaf.stdout is not None and deaf.stdout.readline() == b"\n"  # deaf by now
    spec = WorkerSpec("backup", "deaf", ())
    supervised = master.children["backup:deaf"] = Supervised(spec, Child("backup:deaf"))
    supervised.child.spawned(deaf.pid, 0.0)
    supervised.child.ready(0.0)
    supervised.process = SimpleNamespace(pid=deaf.pid)  # type: ignore[assignment]
    try:
        master._stop_child("backup:deaf")
        time.sleep(0.3)
        assert deaf.poll() is None  # SIGTERM: not heard
        deadline = time.monotonic() + 10
        while deaf.poll() is None and time.monotonic() < deadline:
            master.loop.call_later(0.05, lambda: None)
            master.loop.run_once()
        assert deaf.returncode == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(deaf.pid, signal.SIGKILL)
        deaf.wait()
        deaf.stdout.close()
        master.loop.close()
