"""The host-wide queue at 200 due jobs, through the daemon (issue 18, item 2).

200 watched backups of one small directory each, to one local repository,
max_concurrent_jobs = 2, restic from PATH. Their run records say they last succeeded a day
ago, minus a few seconds: they all fall due at the same moment, once the daemon is up and
settled. Measured, sampling every process of the daemon's tree every half second: the job
processes alive at once (a waiting run is a ticket, not a process), the inotify instances
of the whole daemon (every watch is the watcher's, on one instance) and the watches lost
(watch.limit events), the memory of henbackup's own processes (PSS, so that pages the
workers share with the master count once; restic's own processes are not counted), at rest
just before the moment and at its peak during the drain, the time from the moment to the
last job's end, and how long a freed slot stays idle before the next job starts (the
queue's own hand-off, woken through the waiter's FIFO).

Baseline, measured in the same run: bare restic backing up 10 of the same directories, 2 at
a time as the daemon's 2 slots run them, scaled to 200 jobs (what a perfect queue would
take).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench._installed import BIN, environment
from bench.table import Goal, Table

BACKUPS = int(os.environ.get("BENCH_QUEUE_BACKUPS", 200))
SLOTS = 2
SETTLE = 20.0  # seconds from the daemon's start to the moment they fall due
BASELINE_RUNS = 10
PASSWORD = "bench: the queue"
MIB = 1024 * 1024
JOB_PROCESS_MIB = 10  # a job process's own memory (issue 18: ~5 MiB each), with slack
WAITING_MIB = 1  # what one due backup may add while it waits (it was a 5 MiB process)
HANDOFF_GOAL = 0.25  # seconds a freed slot stays idle, median


@dataclass
class Drain:
    peak_job_processes: int = 0
    peak_instances: int = 0  # the whole daemon's, at once
    lost_watches: int = 0  # watch.limit events
    rest_mib: float = 0.0
    peak_mib: float = 0.0
    seconds: float = 0.0
    succeeded: int = 0
    failed: int = 0
    idle_slot: float = 0.0  # median seconds from a job's end to the next one's start


def _median_idle(starts: list[float], ends: list[float]) -> float:
    """Median seconds from the latest end before each start to that start (the starts that
    found a free slot at the moment are left out)."""
    gaps = []
    for start in sorted(starts)[SLOTS:]:
        before = [end for end in ends if end <= start]
        if before:
            gaps.append(start - max(before))
    gaps.sort()
    return gaps[len(gaps) // 2] if gaps else 0.0


def _environment(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RESTIC_PASSWORD": PASSWORD,
        "HENBACKUP_EVENTS": "stderr",
        "RUNTIME_DIRECTORY": str(tmp / "run"),
        "STATE_DIRECTORY": str(tmp / "state"),
        "CACHE_DIRECTORY": str(tmp / "cache"),
    }


def _prepare(tmp: Path, restic: str, due_at: float) -> Path:
    """The repository, the data, the config and run records falling due at `due_at`."""
    env = _environment(tmp)
    subprocess.run(
        [restic, "init", "-r", str(tmp / "repo")], env=env, check=True, capture_output=True
    )
    lines = [
        "[daemon]",
        f"restic = {json.dumps(restic)}",
        f"max_concurrent_jobs = {SLOTS}",
        "[repositories.local]",
        f"location = {json.dumps(str(tmp / 'repo'))}",
        f"password = {json.dumps(PASSWORD)}",
    ]
    last = json.dumps({"last_success": due_at - 86400, "last_attempt": due_at - 86400})
    (tmp / "state" / "backups").mkdir(parents=True)
    for n in range(BACKUPS):
        data = tmp / "data" / f"b{n}"
        data.mkdir(parents=True)
        (data / "file").write_text(f"backup {n}\n")
        lines += [f"[backups.b{n}]", f"paths = [{json.dumps(str(data))}]"]
        lines += ['repositories = ["local"]', 'schedule = ["1d"]']
        lines += ['watch = { wait_min = "1h", wait_max = "2h" }']
        (tmp / "state" / "backups" / f"b{n}.json").write_text(last + "\n")
    config = tmp / "henbackup.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    return config


def _pss_mib(process: psutil.Process) -> float:
    with open(f"/proc/{process.pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _instances(pid: int) -> int:
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
    return count


def _look(master: psutil.Process, drain: Drain) -> float:
    """Count the tree once; returns henbackup's memory (MiB)."""
    mib, jobs, instances = 0.0, 0, 0
    for process in [master, *master.children(recursive=True)]:
        with contextlib.suppress(psutil.Error, OSError):
            name = process.name()
            if name == "restic":
                continue
            jobs += name.startswith("hbjob:")
            mib += _pss_mib(process)
            instances += _instances(process.pid)
    drain.peak_instances = max(drain.peak_instances, instances)
    drain.peak_job_processes = max(drain.peak_job_processes, jobs)
    return mib


def _events(stream: int, partial: bytes) -> tuple[list[dict[str, object]], bytes]:
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(stream, 1 << 16):
            data += chunk
    *lines, partial = (partial + data).split(b"\n")
    events = []
    for line in lines:
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events, partial


def _limits(events: list[dict[str, object]]) -> int:
    return sum(event.get("HENBACKUP_EVENT") == "watch.limit" for event in events)


def _daemon_drain(restic: str) -> Drain:
    drain = Drain()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        due_at = time.time() + SETTLE
        config = _prepare(tmp, restic, due_at)
        argv = [str(BIN / "henbackup"), "--config", str(config), "run"]  # as installed
        daemon = subprocess.Popen(argv, env=environment(_environment(tmp)), stderr=subprocess.PIPE)
        assert daemon.stderr is not None
        stream = daemon.stderr.fileno()
        os.set_blocking(stream, False)
        partial, starts, ends = b"", [], []
        try:
            master = psutil.Process(daemon.pid)
            while time.time() < due_at - 1:
                drain.rest_mib = _look(master, drain)  # the last look before the moment
                events, partial = _events(stream, partial)
                drain.lost_watches += _limits(events)
                time.sleep(0.5)
            deadline = due_at + 3600
            while drain.succeeded + drain.failed < BACKUPS and time.time() < deadline:
                drain.peak_mib = max(drain.peak_mib, _look(master, drain))
                events, partial = _events(stream, partial)
                drain.lost_watches += _limits(events)
                for event in events:
                    kind = event.get("HENBACKUP_EVENT")
                    at = int(str(event.get("__REALTIME_TIMESTAMP", 0))) / 1e6
                    if kind == "job.started":
                        starts.append(at)
                    elif kind in ("job.succeeded", "job.failed"):
                        drain.succeeded += kind == "job.succeeded"
                        drain.failed += kind == "job.failed"
                        ends.append(at)
                time.sleep(0.5)
            drain.seconds = max(ends, default=due_at) - due_at
            drain.idle_slot = _median_idle(starts, ends)
        finally:
            daemon.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 120
            while daemon.poll() is None and time.monotonic() < deadline:
                _, partial = _events(stream, partial)  # a full pipe would hold its stop
                time.sleep(0.1)
            if daemon.poll() is None:
                daemon.kill()
            daemon.wait()
    return drain


def _bare_restic_seconds(restic: str) -> float:
    """Seconds for 200 bare restic backups over SLOTS slots, from BASELINE_RUNS run SLOTS at
    a time (as the daemon's slots run them: on a machine of 2 cores, two restics at once do
    not take half the time of one after the other)."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        env = _environment(tmp)
        repository = str(tmp / "repo")
        subprocess.run([restic, "init", "-r", repository], env=env, check=True, capture_output=True)
        started = time.monotonic()
        for first in range(0, BASELINE_RUNS, SLOTS):
            running = []
            for n in range(first, min(first + SLOTS, BASELINE_RUNS)):
                data = tmp / f"b{n}"
                data.mkdir()
                (data / "file").write_text(f"backup {n}\n")
                argv = [restic, "-r", repository, "backup", "--tag", f"backup-b{n}", str(data)]
                running.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL))
            if any(process.wait() != 0 for process in running):
                raise RuntimeError("bare restic failed: see its stderr above")
        elapsed = time.monotonic() - started
    return elapsed * BACKUPS / BASELINE_RUNS


def run() -> Table:
    restic = shutil.which("restic") or "/usr/bin/restic"
    baseline = _bare_restic_seconds(restic)
    drain = _daemon_drain(restic)
    memory_goal = drain.rest_mib + BACKUPS * WAITING_MIB + 2 * SLOTS * JOB_PROCESS_MIB
    jobs_goal = 2 * SLOTS  # one per granted slot, and one finishing after it gave it back
    ratio = drain.seconds / baseline if baseline else ""
    rest_ratio = drain.peak_mib / drain.rest_mib if drain.rest_mib else ""
    rows = (
        ("job processes alive at once, peak", drain.peak_job_processes, "", "", Goal(jobs_goal)),
        ("inotify instances, whole daemon, peak", drain.peak_instances, "", "", Goal(1)),
        ("watches lost (watch.limit)", drain.lost_watches, "", "", Goal(0, "==")),
        ("henbackup memory, PSS, peak (MiB)", drain.peak_mib, drain.rest_mib, rest_ratio,
         Goal(round(memory_goal, 1), unit="MiB")),
        ("a freed slot idle, median (s)", drain.idle_slot, "", "", Goal(HANDOFF_GOAL, unit="s")),
        (f"time to drain {BACKUPS} jobs (s)", drain.seconds, baseline, ratio,
         Goal(1.25, unit="x", column="ratio")),
        ("jobs succeeded", drain.succeeded, "", "", Goal(BACKUPS, "==")),
        ("jobs failed", drain.failed, "", "", Goal(0, "==")),
    )  # fmt: skip
    return Table(
        title=f"queue: {BACKUPS} backups due at once, {SLOTS} slots, one local repository",
        headers=("measure", "value", "baseline", "ratio", "goal"),
        rows=rows,
        notes=(
            "memory baseline: the same daemon at rest, just before the jobs fall due; goal:"
            f" rest + {WAITING_MIB} MiB per waiting backup + {2 * SLOTS} x {JOB_PROCESS_MIB} MiB",
            "time: each job's own restic runs count (issue 18, item 1), the queue's hand-off"
            " is the idle-slot row",
            f"time baseline: bare restic, {BASELINE_RUNS} backups {SLOTS} at a time, scaled to "
            f"{BACKUPS} jobs",
        ),
    )


if __name__ == "__main__":
    print(run().render())
