"""The daemon at scale: private memory per idle backup, READY time, and status time.

A real daemon with 1, 10, 100 and 1,000 schedule-only backups (each its own source
directory, one shared local repository, every backup just succeeded so nothing runs: its
schedule record and the history status shows say so), at
rest. Private memory is Private_Clean + Private_Dirty of /proc/PID/smaps_rollup: what the
process does not share with any other (the forked workers share the master's pages until
one of them writes). READY time is from the start of the process to its sd_notify READY=1
(on our own notify socket). Status time is at the largest count: the master's answer on
the control socket (request to last byte), and the whole `henbackupctl status --json`.
At rest is not all: a worker whose backup ran writes into more of what it shared (the code
of a run), so the memory per backup is also measured at 20 backups once each ran (restic
from PATH, into a local repository). That case is measured again with the kernel's same-page
merging on (KSM: /sys/kernel/mm/ksm/run, at its default pace, turned off again after), once
ksmd has scanned everything three times, with what ksmd spent meanwhile.

Goals (issue 18): at most 2 MiB per idle backup (1,000 backups in 1 GiB of a Raspberry Pi),
status within 50 ms at 1,000 backups. `BENCH_SCALE_COUNTS=1,10` runs fewer counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench._installed import BIN, environment
from bench.table import Goal, Table
from henbackup import names

COUNTS = tuple(int(n) for n in os.environ.get("BENCH_SCALE_COUNTS", "1,10,100,1000").split(","))
SETTLE = 3.0  # seconds after READY=1 for every worker's first messages
PATIENCE = 600.0  # seconds a daemon may take to be ready, or to stop
STATUS_ROUNDS = 7
MIB = 1024 * 1024
GOAL_PER_BACKUP = 2.0  # MiB
AFTER_RUNS = 20  # backups that each run once before their memory is measured
GOAL_TOTAL_1000 = 1024.0  # MiB: 1,000 backups in 1 GiB
GOAL_STATUS = 0.050  # seconds
KSM = Path("/sys/kernel/mm/ksm")
MERGE_SCANS = 3  # full scans of ksmd: a page merges in its second


def _setup(tmp: Path, count: int, ran: bool = True) -> Path:
    """The config of `count` backups, and their run records: each just succeeded (unless
    not `ran`: no record, so each runs once at start, into an initialised repository)."""
    text = f'[repositories.local]\nlocation = "{tmp / "repo"}"\npassword_file = "{tmp / "pw"}"\n'
    (tmp / "pw").write_text("bench\n")
    records = tmp / "state" / names.backup_record("b0").rsplit("/", 1)[0]
    records.mkdir(parents=True)
    now = time.time()
    history = []
    for n in range(count):
        source = tmp / "sources" / f"b{n}"
        source.mkdir(parents=True)
        text += f'[backups.b{n}]\npaths = ["{source}"]\nrepositories = ["local"]\n'
        text += 'schedule = ["1d"]\n'
        record = {"last_success": now, "last_attempt": now}
        if ran:
            (tmp / "state" / names.backup_record(f"b{n}")).write_text(json.dumps(record))
            history.append(_ran(f"b{n}", now))
    (tmp / "state" / "status.json").write_text(json.dumps(history))  # what status shows
    if not ran:
        argv = ["restic", "init", "-r", str(tmp / "repo"), "--password-file", str(tmp / "pw")]
        subprocess.run(argv, check=True, capture_output=True)
    config = tmp / "henbackup.toml"
    config.write_text(text)
    config.chmod(0o600)
    return config


def _ran(backup: str, when: float) -> dict[str, object]:
    """The status history of a backup whose one run succeeded at `when` (status.json)."""
    last = {"started": when, "result": "succeeded", "duration": 1.5, "snapshot": "0" * 64}
    return {
        "key": {"repository": "local", "operation": "backup", "backup": backup},
        "last": {**last, "job": f"{backup}-1", "cpu_sec": 0.8, "memory_peak": 60 << 20},
        "last_success": when,
        "runs": {"succeeded": 1},
        "bytes_added": 12345,
        "snapshots": 1,
    }


def _environment(tmp: Path, notify: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HENBACKUP_EVENTS": "json",
        "NOTIFY_SOCKET": str(notify),
        "RUNTIME_DIRECTORY": str(tmp / "run"),
        "STATE_DIRECTORY": str(tmp / "state"),
        "CACHE_DIRECTORY": str(tmp / "cache"),
    }


def _wait_ready(notify: socket.socket, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} before READY=1")
        notify.settimeout(1.0)
        try:
            if b"READY=1" in notify.recv(65536).split(b"\n"):
                return
        except TimeoutError:
            continue
    raise RuntimeError(f"no READY=1 within {PATIENCE:g} s")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return [int(child) for child in file.read().split()]


def private_mib(pid: int) -> float:
    """Private_Clean + Private_Dirty of the process, in MiB."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            key, *value = line.split()
            if key in ("Private_Clean:", "Private_Dirty:"):
                total += int(value[0])
    return total * 1024 / MIB


def _ask(path: Path, command: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            reply += chunk
    return reply


def _status_times(tmp: Path, env: dict[str, str]) -> tuple[float, float]:
    """Median seconds of the master's status answer, and of a whole henbackupctl status."""
    path = tmp / "run" / "control.sock"
    answers = []
    for _ in range(STATUS_ROUNDS):
        start = time.perf_counter()
        reply = _ask(path, "status")
        answers.append(time.perf_counter() - start)
        assert json.loads(reply)["ok"], reply[:200]
    commands = []
    ctl = [str(BIN / "henbackupctl"), "--socket", str(path), "--json", "status"]
    for _ in range(STATUS_ROUNDS):
        start = time.perf_counter()
        subprocess.run(ctl, env=environment(env), check=True, stdout=subprocess.DEVNULL)
        commands.append(time.perf_counter() - start)
    return statistics.median(answers), statistics.median(commands)


def _wait_runs(daemon: subprocess.Popen[bytes], count: int) -> None:
    """Until `count` jobs ended (the daemon's JSON events on its stderr)."""
    assert daemon.stderr is not None
    ended, deadline = 0, time.monotonic() + PATIENCE
    while ended < count:
        line = daemon.stderr.readline()
        if not line or time.monotonic() > deadline:
            raise RuntimeError(f"{ended} of {count} jobs ended, then the daemon stopped or hung")
        kind = json.loads(line).get("HENBACKUP_EVENT") if line.startswith(b"{") else None
        if kind in ("job.succeeded", "job.failed"):
            ended += 1
            if kind == "job.failed":
                raise RuntimeError(f"a bench backup failed: {line[:300]!r}")


@contextlib.contextmanager
def merging() -> Iterator[bool]:
    """The kernel's same-page merging on, if this machine lets us (root, a kernel with KSM);
    as it was, after. Yields whether it is on."""
    try:
        before = (KSM / "run").read_text().strip()
        (KSM / "run").write_text("1")
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        (KSM / "run").write_text(before)


def _ksmd_seconds() -> float:
    """CPU time ksmd spent so far."""
    pid = subprocess.run(["pgrep", "-x", "ksmd"], capture_output=True, text=True).stdout.split()
    with open(f"/proc/{pid[0]}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_merged() -> dict[str, float]:
    """Until ksmd has scanned everything MERGE_SCANS times; how long that took, and ksmd's
    CPU seconds per minute meanwhile."""
    scans = int((KSM / "full_scans").read_text()) + MERGE_SCANS
    start, cpu = time.monotonic(), _ksmd_seconds()
    while int((KSM / "full_scans").read_text()) < scans:
        if time.monotonic() - start > PATIENCE:
            raise RuntimeError(f"ksmd did not scan everything {MERGE_SCANS} times in time")
        time.sleep(1.0)
    took = time.monotonic() - start
    return {"merge_time": took, "ksmd": (_ksmd_seconds() - cpu) / took * 60}


def measure(count: int, status: bool, ran: bool = True, merged: bool = False) -> dict[str, float]:
    """Start a daemon of `count` idle backups; its READY time, its memory at rest and (with
    `status`) its status times; stopped at the end. Unless `ran`, every backup runs once
    first, and the memory is measured once they are all idle again; `merged`: once ksmd
    merged what it could."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
        tmp = Path(name)
        config = _setup(tmp, count, ran)
        notify_path = tmp / "notify"
        env = _environment(tmp, notify_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            argv = [str(BIN / "henbackup"), "--config", str(config), "run"]  # as installed
            start = time.monotonic()
            stderr = subprocess.DEVNULL if ran else subprocess.PIPE
            daemon = subprocess.Popen(argv, env=environment(env), stderr=stderr)
            try:
                _wait_ready(notify, daemon)
                result = {"ready": time.monotonic() - start}
                notify.close()  # no longer read
                notify_path.unlink()
                if not ran:
                    _wait_runs(daemon, count)
                time.sleep(SETTLE)
                if merged:
                    result.update(_wait_merged())
                workers = _children(daemon.pid)
                if len(workers) != count:
                    raise RuntimeError(f"{len(workers)} workers at rest, not {count}")
                private = [private_mib(worker) for worker in workers]
                result["per_backup"] = statistics.mean(private)
                result["worst"] = max(private)
                result["total"] = sum(private) + private_mib(daemon.pid)
                if status:
                    result["answer"], result["command"] = _status_times(tmp, env)
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=PATIENCE)
    return result


def _merged_rows() -> list[tuple[object, ...]]:
    """The backups that each ran, with the kernel's same-page merging on."""
    label = "  the same, with the kernel's same-page merging on (MiB)"
    with merging() as on:
        if not on:
            return [(label, AFTER_RUNS, "not measured: needs root and a kernel with KSM", "")]
        result = measure(AFTER_RUNS, status=False, ran=False, merged=True)
    return [
        (label, AFTER_RUNS, result["per_backup"], Goal(GOAL_PER_BACKUP, unit="MiB")),
        (f"  ksmd: {MERGE_SCANS} full scans (s)", AFTER_RUNS, result["merge_time"], ""),
        ("  ksmd: CPU meanwhile (s/min)", AFTER_RUNS, result["ksmd"], ""),
    ]


def run() -> Table:
    rows: list[tuple[object, ...]] = []
    for count in COUNTS:
        result = measure(count, status=count == max(COUNTS))
        rows.append(
            (
                "private memory per idle backup (MiB, mean of workers)",
                count,
                result["per_backup"],
                Goal(GOAL_PER_BACKUP, unit="MiB"),
            )
        )
        rows.append(("  the worst worker (MiB)", count, result["worst"], ""))
        if count == 1000:
            rows.append(
                (
                    "  master + workers (MiB)",
                    count,
                    result["total"],
                    Goal(GOAL_TOTAL_1000, unit="MiB"),
                )
            )
        rows.append(("READY=1 after start (s)", count, result["ready"], "none set"))
        if "answer" in result:
            for label, key in (
                ("status: the master's answer (s)", "answer"),
                ("status: henbackupctl status --json (s)", "command"),
            ):
                rows.append((label, count, result[key], Goal(GOAL_STATUS, unit="s")))
    after = measure(AFTER_RUNS, status=False, ran=False)
    rows.append(
        (
            "  the same, once each backup ran (MiB)",
            AFTER_RUNS,
            after["per_backup"],
            Goal(GOAL_PER_BACKUP, unit="MiB"),
        )
    )
    rows += _merged_rows()
    return Table(
        title="scale: idle schedule-only backups, one worker each",
        headers=("measure", "backups", "value", "goal"),
        rows=tuple(rows),
        value_column="value",
        notes=(
            "private: Private_Clean + Private_Dirty (smaps_rollup), after READY=1 and "
            f"{SETTLE:g} s at rest; status: median of {STATUS_ROUNDS} answers, and of as many "
            "commands (henbackupctl as installed, see bench/_installed.py)",
        ),
    )


if __name__ == "__main__":
    print(run().render())
