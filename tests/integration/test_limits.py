"""Resources on this host's real cgroup v1 hierarchies (as root), with real restic.

`henbackup backup` (outside systemd, as `make demo` runs it) places restic in a leaf of the
cpu, memory and cpuacct hierarchies, with its nice and ionice set before it execs.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from integration.daemon_helpers import Daemon, henbackupctl, ok

from henbackup.config.model import Resources
from henbackup.limits.cgroups import detect
from henbackup.limits.place import problems

PASSWORD = "limits-password"
LIMITED = Path("/sys/fs/cgroup/memory")


def config_text(
    restic: str, data: Path, repo: Path, resources: str, extra: str = "", repo_extra: str = ""
) -> str:
    return f"""
[daemon]
restic = "{restic}"
hostname = "testhost"

[repositories.r]
location = "{repo}"
password = "{PASSWORD}"
{repo_extra}

[backups.pictures]
paths = ["{data}"]
repositories = ["r"]
resources = {{ {resources} }}
{extra}
"""


def init_repository(restic: str, repo: Path) -> None:
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    subprocess.run([restic, "init"], env=env, capture_output=True, check=True)


def start_backup(tmp_path: Path, text: str) -> subprocess.Popen[str]:
    config = tmp_path / "henbackup.toml"
    config.write_text(text)
    env = {**os.environ, "HENBACKUP_EVENTS": "stderr", "CACHE_DIRECTORY": str(tmp_path / "c")}
    env["RUNTIME_DIRECTORY"] = str(tmp_path / "run")
    env["STATE_DIRECTORY"] = str(tmp_path / "state")  # not the host's
    argv = [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(config)]
    return subprocess.Popen(
        [*argv, "backup", "pictures"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def random_data(tmp_path: Path, size: int) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "noise.bin").write_bytes(os.urandom(size))
    return data


def events_of(stderr: str) -> list[dict[str, str]]:
    """The events on stderr, journal fields without their HENBACKUP_ prefix."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [{k.removeprefix("HENBACKUP_").lower(): v for k, v in e.items()} for e in lines]


def test_memory_max_kills_restic_and_the_job_says_which_limit(restic, tmp_path):
    data = random_data(tmp_path, 64 << 20)
    text = config_text(restic, data, tmp_path / "repo", 'memory_max = "8M"')
    process = start_backup(tmp_path, text)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    reason = "restic was killed by the memory limit of pictures (memory_max = 8M)"
    assert stdout == f"pictures → r: FAILED: {reason}\n"
    failed = [e for e in events_of(stderr) if e.get("event") == "job.failed"]
    assert [e["error"] for e in failed] == [reason], stderr
    assert failed[0]["limits"] == "memory_max=8M"
    assert int(failed[0]["memory_peak"]) >= 7 << 20  # it really ran to the limit
    assert not list(LIMITED.glob(f"**/job-{process.pid}"))  # the leaf is gone


def restic_child(parent: int, timeout: float = 60) -> int:
    """The pid of `restic backup` once our backup process started it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1]
            if comm == "restic" and b"backup" in argv and int(fields.split()[1]) == parent:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError("restic never started")


def test_nice_ionice_and_cgroups_are_seen_in_proc_of_the_running_restic(restic, tmp_path):
    data = random_data(tmp_path, 4 << 20)
    resources = 'nice = 13, ionice = "best-effort", cpu_weight = 20, cpu_quota = "50%"'
    seen = tmp_path / "hook-saw"
    hook = (
        'upload_limit = "256K"\n[[backups.pictures.hooks.before]]\ntype = "command"\n'
        f'command = ["sh", "-c", "cat /proc/self/cgroup /proc/self/stat > {seen}"]\n'
    )
    # A repository that exists: the first `restic backup` is the one that runs (to a
    # missing one, a first backup fails at once and the job initialises it).
    init_repository(restic, tmp_path / "repo")
    text = config_text(restic, data, tmp_path / "repo", resources, hook)
    process = start_backup(tmp_path, text)
    try:
        pid = restic_child(process.pid)
        time.sleep(1)  # its Go runtime has started its threads
        threads = list(Path(f"/proc/{pid}/task").iterdir())
        assert len(threads) > 1
        for task in threads:  # every thread: nice was set before exec, not after
            stat = (task / "stat").read_text()
            assert int(stat.rsplit(")", 1)[1].split()[16]) == 13
        said = subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True)
        assert said.stdout.strip() == "best-effort: prio 6"  # (13 + 20) / 5
        cgroup = (Path(f"/proc/{pid}/cgroup")).read_text()
        leaf = f"/job-{process.pid}"
        cpu_line = next(line for line in cgroup.splitlines() if line.split(":")[1] == "cpu")
        assert cpu_line.endswith(leaf)
        cpu_dir = Path("/sys/fs/cgroup/cpu") / cpu_line.split(":", 2)[2].lstrip("/")
        assert (cpu_dir / "cpu.shares").read_text().strip() == "204"
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "50000"
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"GOMAXPROCS=1" in environ
        hook_saw = seen.read_text().splitlines()  # the before hook ran under them too
        assert f"{cpu_line.split(':')[0]}:cpu:{cpu_line.split(':', 2)[2]}" in hook_saw
        assert int(hook_saw[-1].rsplit(")", 1)[1].split()[16]) == 13
    finally:
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    succeeded = [e for e in events_of(stderr) if e.get("event") == "job.succeeded"]
    assert float(succeeded[0]["cpu_sec"]) > 0
    assert not cpu_dir.exists()


def test_a_limit_this_host_cannot_apply_is_said_once_at_start_and_after_a_reload(restic, tmp_path):
    # This host's (and CI's) I/O schedulers offer no blkio weight: io_weight cannot hold.
    reason = problems(Resources(io_weight=20), detect())["io_weight"]
    data = random_data(tmp_path, 1 << 10)
    config = tmp_path / "henbackup.toml"
    repository = "resources = { io_weight = 10, memory_max = '1G' }"
    text = config_text(restic, data, tmp_path / "repo", "io_weight = 20, nice = 5", "", repository)
    config.write_text(text)
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.wait_for("daemon.started")
        warning = daemon.wait_for("limits.unavailable", backup="pictures")
        assert warning["MESSAGE"] == f"pictures: io_weight cannot be applied: {reason}"
        assert warning["PRIORITY"] == "4"
        assert warning["HENBACKUP_KEY"] == "io_weight"
        assert warning["HENBACKUP_ERROR"] == reason
        of_repository = daemon.wait_for("limits.unavailable", repository="r")
        assert (of_repository["HENBACKUP_KEY"], of_repository["HENBACKUP_ERROR"]) == (
            "io_weight",
            reason,
        )
        daemon.collect(1.0)
        assert len(daemon.find("limits.unavailable")) == 2  # once each; the others hold
        since = len(daemon.events)
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_for("config.reloaded", since=since)
        daemon.collect(1.0)
        again = daemon.find("limits.unavailable", since=since)
        assert sorted(e["MESSAGE"] for e in again) == [
            f"pictures: io_weight cannot be applied: {reason}",
            f"r: io_weight cannot be applied: {reason}",
        ]


def test_status_and_metrics_show_the_limits_and_what_the_run_used(restic, tmp_path):
    data = random_data(tmp_path, 4 << 20)
    textfile = tmp_path / "henbackup.prom"
    metrics = f'[metrics]\ntextfile = "{textfile}"\n'
    config = tmp_path / "henbackup.toml"
    text = config_text(restic, data, tmp_path / "repo", 'memory_max = "1G", nice = 5')
    config.write_text(metrics + text)
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.wait_for("daemon.started")
        ok(henbackupctl(daemon, "backup", "pictures"))
        done = daemon.wait_for("job.succeeded", timeout=120, backup="pictures")
        assert done["HENBACKUP_LIMITS"] == "memory_max=1G nice=5"
        status = json.loads(ok(henbackupctl(daemon, "--json", "status")))
        (row,) = next(b for b in status["backups"] if b["name"] == "pictures")["repositories"]
        assert row["limits"] == "memory_max=1G nice=5"
        assert row["cpu_sec"] > 0  # restic's CPU time, from its cgroup
        assert row["memory_peak"] > 1 << 20
        labels = '{backup="pictures",repository="r",operation="backup"}'
        daemon.pump_until(lambda: textfile.exists() and labels in textfile.read_text(), 30)
        exposed = textfile.read_text()
        assert f"henbackup_last_run_cpu_seconds{labels} " in exposed
        assert f"henbackup_last_run_memory_peak_bytes{labels} " in exposed


def test_a_repositorys_check_runs_under_the_repositorys_resources(restic, tmp_path):
    data = random_data(tmp_path, 1 << 10)
    repo = tmp_path / "repo"
    init_repository(restic, repo)
    config = tmp_path / "henbackup.toml"
    repository = "resources = { memory_max = '1G', nice = 7 }"
    config.write_text(config_text(restic, data, repo, "nice = 5", "", repository))
    with Daemon(config, tmp_path / "daemon") as daemon:
        daemon.wait_for("daemon.started")
        ok(henbackupctl(daemon, "check", "r"))
        done = daemon.wait_for("job.succeeded", timeout=120, operation="check")
        assert done["HENBACKUP_LIMITS"] == "memory_max=1G nice=7"
        assert float(done["HENBACKUP_CPU_SEC"]) > 0
