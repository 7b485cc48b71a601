"""The master never dies from one bad event, and its loop never waits on another process.

A real `henbackup run` (tests/integration/daemon_helpers.py) gets what a careless or hostile
client, a damaged state directory or a stuck job process can give it: requests of every
shape over the real control socket, more connections than it has file descriptors, a
restore it has nowhere to put, its queue directory removed, its queue lock held by another
process, kept results and run records of any shape, a reload with absurd nesting. After
each, it answers `status`, and nothing it met is an internal error.

The daemon's restic is a path where nothing is: the jobs that well-formed fuzzed requests
start fail at once, without restic, which is not what is tested here.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from integration.daemon_helpers import Daemon, henbackupctl

from henbackup.protocol import REQUESTS

CONFIG = """\
[daemon]
restic = "{base}/no-restic"

[repositories.local]
location = "{base}/repository"
password = "faults: not a secret"

[backups.pictures]
paths = ["{base}/data"]
repositories = ["local"]
watch = true
"""
REPLY_TIMEOUT = 60.0


def make_daemon(base: Path) -> Daemon:
    (base / "data").mkdir(parents=True, exist_ok=True)
    config = base / "henbackup.toml"
    config.write_text(CONFIG.format(base=base))
    return Daemon(config, base)


@contextlib.contextmanager
def started(daemon: Daemon) -> Iterator[Daemon]:
    with daemon:
        daemon.wait_for("daemon.started")
        yield daemon


def exchange(path: Path, line: bytes) -> dict[str, Any]:
    """Send one raw request line; returns the reply (the line after its waiting word and its
    job events)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        sock.connect(str(path))
        sock.sendall(line + b"\n")
        for raw in sock.makefile("rb"):
            message = json.loads(raw)
            if "event" not in message and "waiting" not in message:
                return message
    raise AssertionError(f"no reply to {line[:80]!r}: the connection closed")


def assert_healthy(daemon: Daemon) -> None:
    """The daemon answers status, and met no internal error."""
    assert daemon.status()["ok"] is True, daemon.report()
    daemon.pump(0)
    assert daemon.find("daemon.error") == [], daemon.report()
    assert daemon.process is not None and daemon.process.poll() is None


# --- requests of every shape -------------------------------------------------------------

COMMANDS = sorted(REQUESTS)
FIELDS = sorted({field.name for fields in REQUESTS.values() for field in fields})
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["pictures", "local", "next", "-3", "/tmp", "abcd1234", "5%"])
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
REQUEST = st.builds(
    lambda command, fields: json.dumps({"command": command, **fields}).encode(),
    st.sampled_from(COMMANDS) | JSON,
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), JSON, max_size=4),
)
NAMES = st.sampled_from(["pictures", "local", "abcd1234", "/nonexistent/restored", "5%", "next"])
VALUES = {  # a value of each declared type, often one the daemon knows
    "a string": NAMES | st.text(max_size=10),
    "true or false": st.booleans(),
    "a list of strings": st.lists(NAMES | st.text(max_size=8), max_size=3),
    "a string or an integer": NAMES | st.integers(-(2**40), 2**40),
    "an object": st.fixed_dictionaries(  # target_base, as henbackupctl sends it, or not
        {},
        optional={
            "path": NAMES | st.text(max_size=10),
            "device": st.integers(-(2**70), 2**70) | NAMES,
            "inode": st.integers(-(2**70), 2**70),
        },
    ),
}
WELL_TYPED = st.sampled_from(COMMANDS).flatmap(
    lambda command: st.fixed_dictionaries(
        {}, optional={field.name: VALUES[field.type.name] for field in REQUESTS[command]}
    ).map(lambda fields: json.dumps({"command": command, **fields}).encode())
)
DEEP = st.integers(1_000, 30_000).map(lambda n: b'{"command": "status", "x": %s}' % nested(n))
ANY_JSON = JSON.map(lambda value: json.dumps(value).encode())
LINES = WELL_TYPED | REQUEST | ANY_JSON | DEEP | st.binary(max_size=64)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with make_daemon(tmp_path_factory.mktemp("fuzz")) as running:
        running.wait_for("daemon.started")
        yield running


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=LINES.filter(lambda line: b"\n" not in line))
@example(line=b'{"command": "backup", "backup": ["pictures"]}')
@example(line=b'{"command": "list-snapshots", "repository": {"local": 1}}')
@example(
    line=b'{"command": "restore-snapshot", "repository": "local", "snapshot": "abcd", "target": 5}'
)
@example(
    line=b'{"command": "restore-snapshot", "repository": "local", "snapshot": "abcd", "include": 5}'
)
@example(line=b'{"command": "status", "x": %s}' % nested(20_000))
def test_no_request_ends_the_daemon(daemon: Daemon, line: bytes) -> None:
    reply = exchange(daemon.socket, line)
    assert reply["ok"] is True or reply["code"] in ("usage", "failed"), reply
    if reply["ok"] is False and reply["code"] == "usage":
        assert "\n" not in reply["error"] and reply["error"], reply
    assert_healthy(daemon)


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"command": "backup", "backup": ["pictures"]}, "'backup' of backup must be a string"),
        (
            {"command": "restore-snapshot", "repository": "local", "snapshot": "ab12", "target": 5},
            "'target' of restore-snapshot must be a string, not a number",
        ),
        ({"command": "status", "x": [[[]]]}, "status has no field 'x'"),
    ],
)
def test_a_request_of_the_wrong_shape_is_one_usage_line(daemon: Daemon, request_, error) -> None:
    reply = exchange(daemon.socket, json.dumps(request_).encode())
    assert (reply["ok"], reply["code"]) == (False, "usage")
    assert error in reply["error"]
    assert_healthy(daemon)


# --- more connections than descriptors ------------------------------------------------------


def test_a_thousand_idle_connections_neither_end_nor_block_the_daemon(tmp_path: Path) -> None:
    """1,032 clients that connect and say nothing, under the usual limit of 1,024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    idle: list[socket.socket] = []
    try:
        with started(make_daemon(tmp_path)) as daemon:
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (1024, 1024))
            for _ in range(1032):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                idle.append(sock)
                sock.connect(str(daemon.socket))  # blocking: waits while the backlog is full
            assert_healthy(daemon)
            assert henbackupctl(daemon, "status").returncode == 0
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- nowhere to restore, no queue directory, a queue lock held elsewhere -------------------------


def immutable(path: Path, on: bool) -> None:
    """Read-only even for root (chattr +i), or writable again; as a user, by its mode."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)
    else:
        path.chmod(0o500 if on else 0o700)


def test_a_restore_with_nowhere_to_go_fails_alone(tmp_path: Path) -> None:
    with started(make_daemon(tmp_path)) as daemon:
        immutable(daemon.state, True)
        try:
            done = henbackupctl(daemon, "restore-snapshot", "local", "abcd1234", "--no-wait")
        finally:
            immutable(daemon.state, False)
        assert done.returncode == 1, done
        restores = daemon.state / "restores"
        assert done.stderr == (
            f"henbackupctl: cannot make a directory in {restores}: Operation not permitted:"
            " use --target\n"
        )
        assert_healthy(daemon)


def test_the_queue_directory_removed_is_an_empty_queue_then_made_again(tmp_path: Path) -> None:
    with started(make_daemon(tmp_path)) as daemon:
        for _ in range(50):  # a worker starting up may still be writing there
            shutil.rmtree(daemon.runtime / "scheduler", ignore_errors=True)
            if not (daemon.runtime / "scheduler").exists():
                break
        assert exchange(daemon.socket, b'{"command": "queue"}') == {"ok": True, "jobs": []}
        assert exchange(daemon.socket, b'{"command": "cancel", "job": "j1"}')["code"] == "usage"
        assert_healthy(daemon)
        since = len(daemon.events)
        daemon.process.send_signal(signal.SIGHUP)  # sets the slots: the directory comes back
        daemon.wait_for("config.reloaded", since=since)
        assert (daemon.runtime / "scheduler" / "slots").read_text() == "1"
        assert_healthy(daemon)


HOLD_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_queue_lock_held_by_another_process_blocks_nothing(tmp_path: Path) -> None:
    with started(make_daemon(tmp_path)) as daemon:
        lock = daemon.runtime / "scheduler" / "lock"
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(lock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            since = len(daemon.events)
            daemon.process.send_signal(signal.SIGHUP)  # the slots are set again
            daemon.wait_for("config.reloaded", since=since, timeout=10)
            assert exchange(daemon.socket, b'{"command": "queue"}') == {"ok": True, "jobs": []}
            assert_healthy(daemon)
        finally:
            holder.communicate("", timeout=10)


# --- what the daemon reads at start, and on reload -------------------------------------------

ENTRY = st.fixed_dictionaries(
    {"key": JSON | st.fixed_dictionaries({"repository": JSON, "operation": JSON})},
    optional={name: JSON for name in ("last", "last_success", "runs", "bytes_added", "snapshots")},
)
KEPT = (
    JSON.map(json.dumps)
    | st.lists(ENTRY, max_size=3).map(json.dumps)
    | st.integers(1_000, 100_000).map(lambda n: nested(n).decode())
    | st.text(max_size=30)
)


@settings(max_examples=8, deadline=None)
@given(results=KEPT, record=KEPT)
@example(results=nested(50_000).decode(), record=nested(50_000).decode())
@example(
    results='[{"key": {"repository": 1, "operation": []}, "last": {"started": "x", "result": 5}}]',
    record='{"last_success": "yesterday"}',
)
def test_any_kept_results_and_run_records_let_the_daemon_start(
    tmp_path_factory: pytest.TempPathFactory, results: str, record: str
) -> None:
    daemon = make_daemon(tmp_path_factory.mktemp("kept"))
    (daemon.state / "status.json").write_text(results)
    (daemon.state / "backups").mkdir()
    (daemon.state / "backups" / "pictures.json").write_text(record)
    with started(daemon):
        assert_healthy(daemon)
        daemon.wait_worker("pictures", lambda worker: worker["state"] == "running")
        assert_healthy(daemon)
    unreadable = [e["HENBACKUP_ERROR"] for e in daemon.find("status.unreadable")]
    assert all(message.startswith(f"{daemon.state / 'status.json'}: ") for message in unreadable)


def test_kept_results_nested_too_deeply_are_reported_and_start_afresh(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path)
    path = daemon.state / "status.json"
    path.write_text(nested(100_000).decode())
    with started(daemon):
        assert_healthy(daemon)
        event = daemon.wait_for("status.unreadable")
    assert event["HENBACKUP_ERROR"] == (
        f"{path}: cannot read the kept job results (not JSON, or nested too deeply):"
        " they start afresh"
    )
    assert event["PRIORITY"] == "4"


def test_a_reload_with_a_table_500_deep_is_rejected_and_the_old_config_runs(
    tmp_path: Path,
) -> None:
    with started(make_daemon(tmp_path)) as daemon:
        config = daemon.config.read_text()
        daemon.config.write_text(config + f"\n[{'.'.join(['a'] * 500)}]\nx = 1\n")
        since = len(daemon.events)
        daemon.process.send_signal(signal.SIGHUP)
        invalid = daemon.wait_for("config.invalid", since=since)
        assert invalid["HENBACKUP_ERROR"] == (
            f"{daemon.config}: tables or arrays are nested more than 32 deep: no setting is"
        )
        assert_healthy(daemon)
        time.sleep(0)  # nothing else to wait for: the old configuration runs on
        assert [b["name"] for b in daemon.status()["backups"]] == ["pictures"]
