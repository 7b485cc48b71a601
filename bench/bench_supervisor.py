"""The daemon at rest: memory of the master and of 10 forked workers, CPU of the idle tree.

Baseline, measured in the same run: a fresh interpreter that imports what a worker imports
(what an exec'd worker would cost). Goals (issue 3): worker USS <= 3 MiB before any watch,
idle CPU <= 0.05 s per minute for the whole tree (nothing polls).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.table import Table

WORKERS = 10
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", 60))
MIB = 1024 * 1024
FRESH_IMPORTS = (
    "import henbackup.worker.main, henbackup.master.supervisor; import time; time.sleep(60)"
)


def _config(tmp: Path) -> Path:
    text = f'[repositories.local]\nlocation = "{tmp / "repo"}"\npassword = "bench"\n'
    for n in range(WORKERS):
        text += f'[backups.b{n}]\npaths = ["{tmp}"]\nrepositories = ["local"]\n'
    path = tmp / "henbackup.toml"
    path.write_text(text)
    return path


def _start(tmp: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HENBACKUP_EVENTS": "stderr",
        "RUNTIME_DIRECTORY": str(tmp / "run"),
        "STATE_DIRECTORY": str(tmp / "state"),
        "CACHE_DIRECTORY": str(tmp / "cache"),
    }
    argv = [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(_config(tmp)), "run"]
    return subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)


def _workers(master: psutil.Process) -> list[psutil.Process]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = master.children()
        if len(children) == WORKERS:
            return children
        time.sleep(0.1)
    raise RuntimeError(f"expected {WORKERS} workers, found {len(master.children())}")


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _fresh_interpreter_uss() -> float:
    fresh = subprocess.Popen([sys.executable, "-c", FRESH_IMPORTS])
    try:
        time.sleep(2)  # imports done
        return psutil.Process(fresh.pid).memory_full_info().uss / MIB
    finally:
        fresh.kill()
        fresh.wait()


def run() -> Table:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = _start(Path(tmp))
        try:
            master = psutil.Process(daemon.pid)
            workers = _workers(master)
            time.sleep(2)  # settled: ready, first heartbeats sent
            uss = sorted(w.memory_full_info().uss / MIB for w in workers)
            master_uss = master.memory_full_info().uss / MIB
            tree = [master, *workers]
            before = _cpu(tree)
            time.sleep(IDLE_SECONDS)
            idle_per_minute = (_cpu(tree) - before) * 60 / IDLE_SECONDS
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    fresh = _fresh_interpreter_uss()
    median = uss[len(uss) // 2]
    return Table(
        title=f"supervisor at rest: master + {WORKERS} workers, idle for {IDLE_SECONDS:g} s",
        headers=("measure", "value", "baseline", "ratio", "goal"),
        rows=(
            ("worker USS, median (MiB)", median, fresh, median / fresh, "<= 3 MiB"),
            ("worker USS, max (MiB)", uss[-1], fresh, uss[-1] / fresh, "<= 3 MiB"),
            ("master USS (MiB)", master_uss, fresh, master_uss / fresh, ""),
            ("idle CPU, whole tree (s/min)", idle_per_minute, "", "", "<= 0.05"),
        ),
        notes=("baseline: a fresh interpreter with the same imports (an exec'd worker)",),
    )


if __name__ == "__main__":
    print(run().render())
