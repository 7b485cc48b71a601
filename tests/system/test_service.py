"""henbackup.service under a real systemd: readiness, status, reload, crashes, stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from user_manager import SystemdHarness

ROOT = Path(__file__).resolve().parents[2]
UNIT = "henbackup.service"
HENBACKUP = Path(sys.executable).parent / "henbackup"


def repository(name: str, where: Path) -> str:
    return f'[repositories.{name}]\nlocation = "{where / name}"\npassword = "pw-{name}"\n'


def backup(name: str, data: Path, repo: str, extra: str = "") -> str:
    return f'[backups.{name}]\npaths = ["{data}"]\nrepositories = ["{repo}"]\n{extra}\n'


class Daemon:
    """The real unit file, pointed at this checkout's henbackup and a test config."""

    def __init__(self, harness: SystemdHarness, tmp: Path) -> None:
        self.harness, self.tmp = harness, tmp
        self.config = tmp / "henbackup.toml"
        self.data = tmp / "data"
        self.data.mkdir()
        (self.data / "file.txt").write_text("precious\n")

    def write_config(self, text: str) -> None:
        self.config.write_text(text)

    def install(self, **env: str) -> None:
        unit = (ROOT / "systemd" / UNIT).read_text()
        unit = unit.replace("/usr/bin/henbackup", f"{HENBACKUP} --config {self.config}")
        settings = {"CACHE_DIRECTORY": str(self.tmp / "cache"), "PATH": os.environ["PATH"]}
        settings.update(env)
        lines = "".join(f'Environment="{k}={v}"\n' for k, v in settings.items())
        # The checkout may live under /tmp, which PrivateTmp= hides: bind it back in.
        lines += f"BindPaths={ROOT}\n"
        unit = unit.replace("[Service]\n", f"[Service]\n{lines}", 1)
        self.harness.install_unit(UNIT, unit)

    def run_with(self, *names: str, **env: str) -> None:
        """Write a config of these backups (one local repository), install it, start it."""
        config = repository("local", self.tmp)
        config += "".join(backup(name, self.data, "local") for name in names)
        self.write_config(config)
        self.install(**env)
        self.start()

    def start(self) -> dict[str, str]:
        self.harness.systemctl("start", UNIT)
        return self.harness.wait_show(UNIT, ActiveState="active", SubState="running")

    def events(self, kind: str, count: int = 1, **fields: str) -> list[dict[str, str]]:
        match = {
            "HENBACKUP_EVENT": kind,
            **{f"HENBACKUP_{k.upper()}": v for k, v in fields.items()},
        }
        return self.harness.wait_journal(match, count=count, timeout=30)

    def worker_pid(self, name: str) -> int:
        (event,) = self.events("child.started", child=name)[-1:]
        return int(event["HENBACKUP_PID"])

    def status(self) -> str:
        return self.harness.show(UNIT, "StatusText")["StatusText"]


@pytest.fixture
def daemon(systemd_harness: SystemdHarness) -> Iterator[Daemon]:
    # In the checkout, which the unit binds in (pytest's tmp_path is hidden by PrivateTmp=).
    (ROOT / ".cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / ".cache", prefix="system-") as tmp:
        yield Daemon(systemd_harness, Path(tmp))


def test_start_reports_ready_and_a_status_line(daemon: Daemon) -> None:
    daemon.run_with("pictures", "music")
    daemon.harness.wait_for(lambda: daemon.status() == "2 backups; idle", 10, "status")
    (started,) = daemon.events("daemon.started")
    assert started["MESSAGE"] == "henbackup started: 2 backups"
    assert started["SYSLOG_IDENTIFIER"] == "henbackup"
    assert started["PRIORITY"] == "5"
    workers = daemon.events("child.started", count=2)
    assert sorted(e["HENBACKUP_CHILD"] for e in workers) == ["music", "pictures"]
    for event in workers:
        comm = Path(f"/proc/{event['HENBACKUP_PID']}/comm").read_text().strip()
        assert comm == f"hb:{event['HENBACKUP_CHILD']}"


def test_a_killed_worker_is_restarted_alone(daemon: Daemon) -> None:
    daemon.run_with("pictures", "music")
    victim, other = daemon.worker_pid("pictures"), daemon.worker_pid("music")
    os.kill(victim, signal.SIGKILL)
    (exited,) = daemon.events("child.exited", child="pictures")
    assert exited["HENBACKUP_PID"] == str(victim)
    assert exited["HENBACKUP_STATE"] == "backoff"
    assert (
        exited["MESSAGE"]
        == f"worker pictures (pid {victim}) was killed by SIGKILL; restarting in 1s"
    )
    restarted = daemon.events("child.started", count=2, child="pictures")
    assert int(restarted[-1]["HENBACKUP_PID"]) != victim
    assert daemon.worker_pid("music") == other
    assert Path(f"/proc/{other}").exists()


def test_a_hung_worker_is_killed_and_replaced(daemon: Daemon) -> None:
    daemon.run_with("pictures", HENBACKUP_HANG_TIMEOUT="2")
    victim = daemon.worker_pid("pictures")
    os.kill(victim, signal.SIGSTOP)  # alive, but silent: no heartbeat any more
    (exited,) = daemon.events("child.exited", child="pictures")
    assert exited["MESSAGE"].startswith(f"worker pictures (pid {victim}) hung and was killed")
    assert len(daemon.events("child.started", count=2, child="pictures")) == 2


def test_reload_restarts_only_what_changed(daemon: Daemon) -> None:
    base = repository("local", daemon.tmp) + backup("music", daemon.data, "local")
    daemon.write_config(
        base + backup("pictures", daemon.data, "local") + backup("old", daemon.data, "local")
    )
    daemon.install()
    daemon.start()
    music, pictures = daemon.worker_pid("music"), daemon.worker_pid("pictures")
    daemon.write_config(
        base
        + backup("pictures", daemon.data, "local", 'excludes = ["*.tmp"]')
        + backup("new", daemon.data, "local")
    )
    daemon.harness.systemctl("reload", UNIT)
    (reloaded,) = daemon.events("config.reloaded")
    assert reloaded["HENBACKUP_ADDED"] == "backup:new"
    assert reloaded["HENBACKUP_CHANGED"] == "backup:pictures"
    assert reloaded["HENBACKUP_REMOVED"] == "backup:old"
    assert len(daemon.events("child.started", count=2, child="pictures")) == 2
    daemon.events("child.started", child="new")
    daemon.events("child.exited", child="old")
    assert daemon.worker_pid("music") == music  # untouched
    assert daemon.worker_pid("pictures") != pictures
    daemon.harness.wait_show(UNIT, ActiveState="active", SubState="running")
    daemon.harness.wait_for(lambda: daemon.status() == "3 backups; idle", 10, "status")


def test_a_broken_config_is_rejected_and_the_old_one_keeps_running(daemon: Daemon) -> None:
    daemon.run_with("pictures")
    worker = daemon.worker_pid("pictures")
    daemon.write_config(backup("pictures", daemon.data, "nowhere") + "[daemon]\nbogus = 1\n")
    daemon.harness.systemctl("reload", UNIT)
    (invalid,) = daemon.events("config.invalid")
    assert invalid["PRIORITY"] == "3"
    assert invalid["HENBACKUP_PROBLEMS"] == "2"
    assert str(daemon.config) in invalid["HENBACKUP_ERROR"]
    assert "\n" not in invalid["HENBACKUP_ERROR"]
    daemon.harness.wait_show(UNIT, ActiveState="active", SubState="running")
    assert daemon.worker_pid("pictures") == worker
    assert Path(f"/proc/{worker}").exists()
    assert daemon.harness.journal({"HENBACKUP_EVENT": "config.reloaded"}) == []
    rejected = "new configuration rejected, the previous one runs"
    assert rejected in daemon.status()  # until a reload works: the edit was not taken
    daemon.write_config(repository("local", daemon.tmp) + backup("pictures", daemon.data, "local"))
    daemon.harness.systemctl("reload", UNIT)
    daemon.events("config.reloaded")
    daemon.harness.wait_show(UNIT, ActiveState="active", SubState="running")
    assert rejected not in daemon.status()


def test_a_broken_config_at_start_fails_the_unit_once_and_says_so(daemon: Daemon) -> None:
    """Before, it exited 1: restarted every RestartSec for ever, each time printing its
    problems, and with no config.invalid event for a journal query to find."""
    daemon.write_config(backup("pictures", daemon.data, "nowhere"))
    daemon.install()
    daemon.harness.systemctl("start", UNIT, check=False)
    daemon.harness.wait_show(UNIT, ActiveState="failed", ExecMainStatus="6")
    (invalid,) = daemon.events("config.invalid")
    assert invalid["HENBACKUP_PROBLEMS"] == "1" and "nowhere" in invalid["HENBACKUP_ERROR"]
    restart_sec = int(daemon.harness.show(UNIT, "RestartUSec")["RestartUSec"].rstrip("s"))
    time.sleep(restart_sec + 2)
    assert daemon.harness.show(UNIT, "NRestarts", "ActiveState") == {
        "NRestarts": "0",
        "ActiveState": "failed",
    }


def test_stop_is_clean_and_quick(daemon: Daemon) -> None:
    daemon.run_with("pictures")
    worker = daemon.worker_pid("pictures")
    daemon.harness.systemctl("stop", UNIT)
    daemon.events("daemon.stopping")
    (exited,) = daemon.events("child.exited", child="pictures")
    assert exited["HENBACKUP_EXIT_STATUS"] == "0"
    assert exited["HENBACKUP_STATE"] == "stopped"
    assert not Path(f"/proc/{worker}").exists()
    stopped = daemon.harness.wait_journal(
        {"USER_UNIT": UNIT, "JOB_RESULT": "done", "JOB_TYPE": "stop"}, timeout=30
    )
    assert stopped


CONTROL = "/run/user/0/henbackup/control.sock"  # RuntimeDirectory= of a root user unit


def ctl(daemon: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    henbackupctl = str(HENBACKUP.parent / "henbackupctl")
    return daemon.harness.run([henbackupctl, "--socket", CONTROL, *args], check=check)


def restic(daemon: Daemon, repo: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(daemon.tmp / repo),
        "RESTIC_PASSWORD": f"pw-{repo}",
    }
    return subprocess.run(["restic", *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_backup_runs_and_its_events_answer_the_journal_query(daemon: Daemon) -> None:
    daemon.run_with("pictures")
    assert ctl(daemon, "backup", "pictures", "--no-wait").stdout == "backup requested\n"
    (succeeded,) = daemon.events("job.succeeded", backup="pictures")
    assert succeeded["HENBACKUP_REPOSITORY"] == "local"
    assert succeeded["HENBACKUP_OPERATION"] == "backup"
    assert succeeded["HENBACKUP_TRIGGER"] == "manual"
    assert succeeded["HENBACKUP_FILES_NEW"] == "1"
    assert succeeded["SYSLOG_IDENTIFIER"] == "henbackup"
    started = daemon.events("job.started", backup="pictures")
    assert started[0]["HENBACKUP_JOB"] == succeeded["HENBACKUP_JOB"]
    snapshots = json.loads(restic(daemon, "local", "snapshots", "--json").stdout)
    assert [s["short_id"] for s in snapshots] == [succeeded["HENBACKUP_SNAPSHOT"]] or [
        s["id"] for s in snapshots
    ] == [succeeded["HENBACKUP_SNAPSHOT"]]
    status = json.loads(ctl(daemon, "--json", "status").stdout)
    assert status["status"] == "1 backup; idle"
    assert [(b["name"], b["worker"]) for b in status["backups"]] == [("pictures", "running")]
    (row,) = status["backups"][0]["repositories"]
    assert (row["state"], row["result"], row["job"]) == ("idle", "succeeded", None)
    assert row["snapshot"] == succeeded["HENBACKUP_SNAPSHOT"]


def test_unknown_backup_is_exit_2_and_no_daemon_is_exit_3(daemon: Daemon) -> None:
    daemon.run_with("pictures")
    unknown = ctl(daemon, "backup", "music", "--no-wait", check=False)
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "henbackupctl: no backup named 'music' (defined: pictures)\n",
    )
    daemon.harness.systemctl("stop", UNIT)
    gone = ctl(daemon, "status", check=False)
    assert gone.returncode == 3
    assert gone.stderr.startswith(f"henbackupctl: cannot reach the daemon at {CONTROL}: ")


def test_stop_during_a_backup_leaves_the_repository_clean(daemon: Daemon) -> None:
    (daemon.data / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    daemon.write_config(
        repository("local", daemon.tmp)
        + backup("pictures", daemon.data, "local", 'upload_limit = "1M"')
    )
    assert restic(daemon, "local", "init").returncode == 0
    daemon.install()
    daemon.start()
    ctl(daemon, "backup", "pictures", "--no-wait")
    daemon.events("job.started", backup="pictures")
    daemon.harness.wait_for(
        lambda: list((daemon.tmp / "local" / "locks").iterdir()), 30, "restic's lock"
    )
    daemon.harness.wait_for(
        lambda: re.fullmatch(r"1 backup; running: pictures→local( [0-9.]+%)?", daemon.status()),
        10,
        "a STATUS line naming the running job",
    )
    daemon.harness.systemctl("stop", UNIT)
    (cancelled,) = daemon.events("job.cancelled", backup="pictures")
    assert cancelled["HENBACKUP_REPOSITORY"] == "local"
    daemon.events("child.exited", child="pictures")
    assert daemon.harness.show(UNIT, "ActiveState")["ActiveState"] in ("inactive", "deactivating")
    assert restic(daemon, "local", "list", "locks", "--no-lock").stdout == ""
    checked = restic(daemon, "local", "check")
    assert checked.returncode == 0, checked.stderr


IDLE_CLIENTS = """
import socket, subprocess, sys
idle = [socket.socket(socket.AF_UNIX) for _ in range(1032)]
for sock in idle:
    sock.connect(sys.argv[1])  # and says nothing
status = subprocess.run([sys.argv[2], "--socket", sys.argv[1], "status"], capture_output=True)
sys.exit(status.returncode)
"""


def test_the_unit_gives_the_master_descriptors_to_outlast_idle_clients(daemon: Daemon) -> None:
    daemon.run_with("pictures")
    pid = daemon.harness.show(UNIT, "MainPID")["MainPID"]
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"^Max open files +16384 +16384 ", limits, re.MULTILINE), limits
    henbackupctl = str(HENBACKUP.parent / "henbackupctl")
    clients = daemon.harness.run(
        [sys.executable, "-c", IDLE_CLIENTS, CONTROL, henbackupctl], timeout=60
    )
    assert clients.returncode == 0, clients.stderr
    assert daemon.harness.show(UNIT, "ActiveState", "MainPID") == {
        "ActiveState": "active",
        "MainPID": pid,
    }
    ctl(daemon, "status")
