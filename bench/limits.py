"""Whether resources and bandwidth limits hold, measured (cgroup v1 here, as root).

- cpu_weight: two CPU-bound programs (busy loops: restic cannot be kept CPU-bound for long
  on a small data set) started through the same path as restic (process.spawn, entering
  their run's leaf before exec), pinned to one core, with cpu_weight 100 and 20; the ratio
  of the CPU time each got, against 100/20 (goal: within 15 %).
- upload_limit: a backup of 32 MiB of random data to a REST repository on 127.0.0.1
  (rclone serve restic) with upload_limit = 2M, through ResticEngine, and by bare restic
  with the same --limit-upload as the baseline in the same run (goal: within 5 % of 2M).
- host budget: two backups at once under [daemon] upload_limit = "2M", max_concurrent_jobs
  = 2, each with the limit target_for gives it; their total rate (goal: never above 2M).
Rates are bytes stored in the repository per second: sustained (sampled while the upload
runs, from 3 s in) and over the whole backup.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.table import Goal, Table
from henbackup.config.load import load_config
from henbackup.config.model import PasswordSource, Resources
from henbackup.engine.base import BackupRequest, Target
from henbackup.engine.restic import (
    ResticEngine,
    backup_args,
    child_env,
    global_flags,
    make_command,
    password_env,
)
from henbackup.jobs.targets import target_for
from henbackup.limits import cgroups, mapping
from henbackup.limits.cgroups import Leaf
from henbackup.limits.place import Placement
from henbackup.process import set_program_setup, spawn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from integration.backends import RestServer

LIMIT = 2 << 20
DATA = 32 << 20
BUSY_SECONDS = 6.0
SAMPLE = 0.5  # seconds between two looks at the repository's size
SETTLE = 3.0  # restic has started and spent its limiter's first burst
PASSWORD = "bench password"


def cpu_time(pid: int) -> float:
    """utime + stime of `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_in_leaf(host: cgroups.Host, weight: int) -> tuple[subprocess.Popen[bytes], Leaf]:
    """A busy loop pinned to CPU 0, spawned as restic is, in a leaf with `cpu_weight`."""
    resources = Resources(cpu_weight=weight)
    values = mapping.v2_values(resources) if host.layout == "v2" else mapping.v1_values(resources)
    leaf, failed = cgroups.make_leaf(host, f"job-bench-{weight}", values)
    assert leaf is not None and not failed, failed
    busy = [sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"]
    set_program_setup(Placement("bench", resources, lambda *_, **__: None, leaf).enter_program)
    try:
        process, mask = spawn(busy, signal.SIGKILL, stdout=subprocess.DEVNULL)
    finally:
        set_program_setup(None)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return process, leaf


def cpu_weight_row() -> tuple[object, ...]:
    host = cgroups.detect()
    running = [busy_in_leaf(host, weight) for weight in (100, 20)]
    try:
        time.sleep(1.0)  # both run, pinned
        before = [cpu_time(process.pid) for process, _ in running]
        time.sleep(BUSY_SECONDS)
        after = [cpu_time(process.pid) for process, _ in running]
    finally:
        for process, leaf in running:
            process.kill()
            process.wait()
            leaf.remove()
    heavy, light = (a - b for a, b in zip(after, before, strict=True))
    ratio, goal = heavy / light, Goal(100 / 20, "~", within=0.15)
    return ("cpu_weight 100 vs 20", "CPU-time ratio", ratio, ratio, goal)


def repository_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Rest:
    """A REST server on 127.0.0.1 with one initialized repository per name."""

    def __init__(self, work: Path, binary: str) -> None:
        self.work, self.binary = work, binary
        self.server = RestServer(work / "rest", work / "rclone.log")
        (work / "rest").mkdir()
        self.server.start()
        self.password_file = work / "password"
        self.password_file.write_text(PASSWORD + "\n")

    def target(self, name: str, upload_limit: int | None) -> Target:
        location = f"{self.server.location}{name}/"
        password = PasswordSource("file", str(self.password_file))
        return Target(name, location, password, upload_limit=upload_limit)

    def fresh(self, name: str, upload_limit: int | None) -> Target:
        target = self.target(name, upload_limit)
        ResticEngine(self.binary, cache_dir=self.work / "cache").ensure_initialized(target)
        return target

    def stored(self, name: str) -> int:
        return repository_bytes(self.work / "rest" / name)

    def bare(self, target: Target, data: Path) -> subprocess.Popen[bytes]:
        request = BackupRequest("bench", (str(data),), host="bench")
        argv = make_command(self.binary, backup_args(request, False), global_flags(target, None))
        env = child_env(os.environ, target, password_env(target.password))
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass(frozen=True)
class Rates:
    sustained: float  # bytes/s between the samples from SETTLE on, while the upload runs
    whole: float  # bytes/s over the whole backup, start-up and restic's first burst in


def measure_rates(running: Callable[[], bool], stored: Callable[[], int]) -> Rates:
    """Sample `stored()` while `running()`: the sustained rate and the whole run's."""
    start, first = time.perf_counter(), stored()
    samples: list[tuple[float, int]] = []
    while running():
        time.sleep(SAMPLE)
        now = time.perf_counter()
        if now - start >= SETTLE:
            samples.append((now, stored()))
    end = time.perf_counter()
    (t1, b1), (t2, b2) = samples[0], samples[-1]
    return Rates((b2 - b1) / (t2 - t1), (stored() - first) / (end - start))


def still_running(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is None


def engine_backup(rest: Rest, target: Target, data: Path) -> subprocess.Popen[bytes]:
    """ResticEngine's backup in a child process, so that this one can sample meanwhile."""
    code = (
        "import sys; from pathlib import Path\n"
        "from henbackup.engine.base import BackupRequest, Target\n"
        "from henbackup.config.model import PasswordSource\n"
        "from henbackup.engine.restic import ResticEngine\n"
        "binary, cache, location, password, limit, data = sys.argv[1:]\n"
        "target = Target('engine', location, PasswordSource('file', password),"
        " upload_limit=int(limit))\n"
        "request = BackupRequest('bench', (data,), host='bench')\n"
        "ResticEngine(binary, cache_dir=Path(cache)).backup(target, request)\n"
    )
    password = str(rest.password_file)
    argv = [rest.binary, str(rest.work / "cache"), target.location, password, str(LIMIT)]
    return subprocess.Popen([sys.executable, "-c", code, *argv, str(data)])


def upload_rows(rest: Rest, data: Path) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for way in ("bare restic", "ResticEngine"):
        name = way.split()[0].lower()
        target = rest.fresh(name, LIMIT)
        process = (
            rest.bare(target, data) if way == "bare restic" else engine_backup(rest, target, data)
        )
        rates = measure_rates(still_running(process), lambda name=name: rest.stored(name))
        assert process.wait() == 0
        goal = Goal(LIMIT / 2**20, "~", "MiB/s", within=0.05)
        mib = (rates.sustained / 2**20, rates.whole / 2**20)
        rows.append((f"upload_limit = 2M, {way}", "MiB/s", *mib, goal))
    return rows


def budget_row(rest: Rest, data: Path) -> tuple[object, ...]:
    config_file = rest.work / "henbackup.toml"
    config_file.write_text(
        '[daemon]\nupload_limit = "2M"\nmax_concurrent_jobs = 2\n'
        f'[repositories.one]\nlocation = "{rest.server.location}one/"\n'
        f'password_file = "{rest.password_file}"\n'
        f'[repositories.two]\nlocation = "{rest.server.location}two/"\n'
        f'password_file = "{rest.password_file}"\n'
        f'[backups.b]\npaths = ["{data}"]\nrepositories = ["one", "two"]\nupload_limit = "5M"\n'
    )
    config = load_config(config_file)
    backup = config.backups["b"]
    targets = [target_for(config, config.repositories[name], backup) for name in ("one", "two")]
    for target in targets:
        rest.fresh(target.name, None)
    running = [rest.bare(target, data) for target in targets]
    rates = measure_rates(
        lambda: all(p.poll() is None for p in running),  # while both run at once
        lambda: rest.stored("one") + rest.stored("two"),
    )
    assert [p.wait() for p in running] == [0, 0]
    mib = (rates.sustained / 2**20, rates.whole / 2**20)
    return ("budget 2M, two jobs at once", "MiB/s total", *mib, Goal(LIMIT / 2**20, unit="MiB/s"))


def run() -> Table:
    binary = shutil.which("restic") or "restic"
    rows = [cpu_weight_row()]
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as scratch:
        work = Path(scratch)
        data = work / "data"
        data.mkdir()
        (data / "noise.bin").write_bytes(os.urandom(DATA))
        rest = Rest(work, binary)
        try:
            rows += upload_rows(rest, data)
            rows.append(budget_row(rest, data))
        finally:
            rest.server.kill()
    return Table(
        "Limits: cpu_weight, upload_limit and the host budget (cgroup v1, restic 0.14, REST)",
        ("what", "unit", "sustained", "whole run", "goal"),
        tuple(rows),
        (
            "goal: CPU ratio within 15 % of 5; a rate within 5 % of 2 MiB/s; a total never above.",
            "sustained: from 3 s in, while uploading; whole run: start-up and restic's first"
            " burst (its limiter is a token bucket) in.",
        ),
        value_column="sustained",
    )
