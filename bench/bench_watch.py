"""What watching costs the watcher process: henbackup's Watcher against bare pyinotify.

- Set-up: watching trees of 20,000 and 100,000 directories (fan-out 10), each measured in a
  fresh interpreter: wall time of the start, and RSS growth per watch (the watcher's memory;
  the kernel's own ~1 KiB per watch is not in it). Baseline: pyinotify's
  WatchManager.add_watch(rec=True), as the issue measured it. Median of REPETITIONS. The
  goal is for the first backup on the watcher's inotify instance (the one that usually has
  the big tree); a row without a goal shows the same tree watched as a second backup, whose
  wds the instance's hub must note one by one (see henbackup/worker/inotify_hub.py).
- Storm: another process creates 100,000 files (create + write: 2 events each) in a watched
  directory while the loop debounces (wait_min 1 s): the triggers it gave and the watcher's
  CPU time until the trigger. henbackup checks excludes .git and *.tmp on each event.
  Baseline: pyinotify's Notifier read_events/process_events on the same loop (no threads),
  counting the same events.
- Latency: a file is touched; how late the trigger comes after wait_min (0.2 s), 10 times.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Goal, Table

ROOT = Path(__file__).resolve().parent.parent
REPETITIONS = 3
SIZES = (20_000, 100_000)
STORM_FILES = 100_000
STORM_EXCLUDES = (".git", "*.tmp")
WAIT_MIN = 1.0
LATENCY_WAIT = 0.2
LATENCY_TRIALS = 10
FANOUT = 10


def make_tree(root: Path, count: int) -> None:
    """`count` directories below `root` (itself not counted), breadth first, FANOUT each."""
    root.mkdir(parents=True)
    queue, made = [root], 0
    while made < count:
        parent = queue.pop(0)
        for i in range(min(FANOUT, count - made)):
            child = parent / f"d{i}"
            child.mkdir()
            queue.append(child)
            made += 1


def rss() -> int:
    """Resident set size of this process in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# children: each measurement runs in a fresh interpreter
def child_setup(kind: str, root: str) -> dict[str, float]:
    """Watch `root` with `kind`; returns seconds, bytes of RSS growth and watch count."""
    from henbackup.loop import Loop

    loop = Loop()
    if kind == "pyinotify":
        import pyinotify

        manager = pyinotify.WatchManager()
        gc.collect()
        before = rss()
        started = time.perf_counter()
        manager.add_watch(root, _pyinotify_mask(), rec=True)
        seconds = time.perf_counter() - started
        watches = len(manager.watches)
    else:
        from henbackup.excludes import Excluder
        from henbackup.worker.inotify_hub import InotifyHub
        from henbackup.worker.watch import Watcher

        hub = InotifyHub(loop)
        if kind == "second":  # another backup came first: it is the hub's default
            first = f"{root}-first"  # in the bench's scratch directory, as the tree
            os.makedirs(first, exist_ok=True)
            Watcher([first], Excluder(), loop, print, print, print, hub=hub).start()
        watcher = Watcher([root], Excluder(), loop, print, print, print, hub=hub)
        gc.collect()
        before = rss()
        started = time.perf_counter()
        watcher.start()
        seconds = time.perf_counter() - started
        watches = watcher.watch_count
    gc.collect()
    return {"seconds": seconds, "bytes": rss() - before, "watches": watches}


def _pyinotify_mask() -> int:
    import pyinotify

    return (
        pyinotify.IN_MODIFY
        | pyinotify.IN_ATTRIB
        | pyinotify.IN_CREATE
        | pyinotify.IN_DELETE
        | pyinotify.IN_MOVED_FROM
        | pyinotify.IN_MOVED_TO
        | pyinotify.IN_DELETE_SELF
        | pyinotify.IN_MOVE_SELF
    )


_WRITER = """
import os, sys
directory = sys.argv[1]
for i in range(int(sys.argv[2])):
    fd = os.open(f"{directory}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x")
    os.close(fd)
"""


def child_storm(kind: str, root: str) -> dict[str, float]:
    """STORM_FILES creations under watched `root`; returns triggers, CPU, overflows."""
    from henbackup.loop import Loop
    from henbackup.worker.debounce import Debouncer, DebounceTimer

    loop = Loop()
    fired: list[str] = []
    timer = DebounceTimer(loop, Debouncer(WAIT_MIN, 120.0), fired.append)
    overflows = [0]

    def overflowed() -> None:
        overflows[0] += 1
        timer.overflowed()

    if kind == "pyinotify":
        import pyinotify

        manager = pyinotify.WatchManager()

        class Count(pyinotify.ProcessEvent):
            def process_default(self, event: pyinotify.Event) -> None:
                timer.changed(1)

            def process_IN_Q_OVERFLOW(self, event: pyinotify.Event) -> None:
                overflowed()

        notifier = pyinotify.Notifier(manager, Count())
        manager.add_watch(root, _pyinotify_mask(), rec=True, auto_add=True)

        def serve() -> None:
            notifier.read_events()
            notifier.process_events()

        loop.add_reader(manager.get_fd(), serve)
    else:
        from henbackup.excludes import Excluder
        from henbackup.worker.watch import Watcher

        excluder = Excluder(STORM_EXCLUDES)  # a usual config; bare pyinotify checks nothing
        Watcher([root], excluder, loop, timer.changed, overflowed, print).start()
    timer.on_due = lambda reason: (fired.append(reason), loop.stop())
    before = cpu()
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, f"{root}/storm", str(STORM_FILES)])
    loop.run()  # until the trigger
    spent = cpu() - before
    writer.wait()
    loop.call_later(3 * WAIT_MIN, loop.stop)  # any second trigger would come by then
    loop.run()
    return {"triggers": len(fired), "cpu": spent, "overflows": overflows[0]}


def child_latency(root: str) -> dict[str, list[float]]:
    """How late after wait_min the trigger of a single change comes, LATENCY_TRIALS times."""
    from henbackup.excludes import Excluder
    from henbackup.loop import Loop
    from henbackup.worker.debounce import Debouncer, DebounceTimer
    from henbackup.worker.watch import Watcher

    loop = Loop()
    debouncer = Debouncer(LATENCY_WAIT, 10.0)
    fired: list[float] = []

    def due(reason: str) -> None:
        fired.append(time.monotonic())
        loop.stop()

    timer = DebounceTimer(loop, debouncer, due)
    Watcher([root], Excluder(), loop, timer.changed, timer.overflowed, print).start()
    late = []
    for trial in range(LATENCY_TRIALS):
        fired.clear()
        touched = time.monotonic()
        Path(root, f"touch{trial}").write_text("x")
        loop.run()  # until the trigger
        late.append(fired[0] - touched - LATENCY_WAIT)
        debouncer.backup_started(loop.clock())
        debouncer.backup_finished(loop.clock())
    return {"late": late}


def _child(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_watch", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def _setup_rows(work: Path) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for size in SIZES:
        tree = work / f"tree{size}"
        make_tree(tree, size)
        results = {
            kind: [_child("setup", kind, str(tree)) for _ in range(REPETITIONS)]
            for kind in ("henbackup", "second", "pyinotify")
        }
        ours, second, base = results["henbackup"], results["second"], results["pyinotify"]
        assert all(r["watches"] == size + 1 for r in ours + second + base), results
        seconds = [statistics.median(r["seconds"] for r in runs) for runs in (ours, base)]
        per_watch = [
            statistics.median(r["bytes"] / r["watches"] for r in runs)
            for runs in (ours, second, base)
        ]
        big = size == 100_000
        goal_time, goal_bytes = (Goal(1.5, unit="s"), Goal(150, unit="B")) if big else ("", "")
        rows.append((f"set-up {size:,} dirs (s)", *seconds, _ratio(*seconds), goal_time))
        ours_bytes, second_bytes, base_bytes = per_watch
        rows.append(
            (f"memory {size:,} dirs (B/watch)", round(ours_bytes), round(base_bytes),
             _ratio(ours_bytes, base_bytes), goal_bytes)
        )  # fmt: skip
        rows.append(
            ("  the same, watched as a second backup (B/watch)", round(second_bytes),
             round(base_bytes), _ratio(second_bytes, base_bytes))
        )  # fmt: skip
        shutil.rmtree(tree)
    return rows


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base else "-"


def run() -> Table:
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as scratch:
        work = Path(scratch)
        rows = _setup_rows(work)
        storm_root = work / "storm-root"
        (storm_root / "storm").mkdir(parents=True)
        storms = {}
        for kind in ("henbackup", "pyinotify"):
            storms[kind] = _child("storm", kind, str(storm_root))
            shutil.rmtree(storm_root / "storm")
            (storm_root / "storm").mkdir()
        ours, base = storms["henbackup"], storms["pyinotify"]
        rows.append((f"storm {STORM_FILES:,} files: triggers", ours["triggers"], base["triggers"]))
        rows[-1] = (*rows[-1], "", Goal(1, "=="))
        rows.append(
            (
                f"storm {STORM_FILES:,} files: CPU (s)",
                ours["cpu"],
                base["cpu"],
                _ratio(ours["cpu"], base["cpu"]),
                Goal(2, unit="x", column="ratio"),
            )
        )
        rows.append(("storm: queue overflows", ours["overflows"], base["overflows"], "", ""))
        late = _child("latency", str(storm_root))["late"]
        rows.append(("trigger late after wait_min, median (ms)", 1000 * statistics.median(late)))
        rows[-1] = (*rows[-1], "-", "", Goal(100, unit="ms"))
        late_max = 1000 * max(late)
        rows.append(("trigger late after wait_min, max (ms)", late_max, "-", "", rows[-1][-1]))
    return Table(
        "watch: set-up, memory, a storm of changes, trigger latency",
        ("case", "henbackup", "bare pyinotify", "ratio", "goal"),
        tuple(rows),
        (
            f"median of {REPETITIONS} fresh interpreters; trees of fan-out {FANOUT}; "
            f"storm: 2 events per file, wait_min {WAIT_MIN:g} s; latency: wait_min "
            f"{LATENCY_WAIT:g} s, {LATENCY_TRIALS} trials (change to trigger, worker side)",
        ),
    )


def main(argv: list[str]) -> None:
    """The child entry: `setup KIND ROOT`, `storm KIND ROOT`, `latency ROOT`; prints JSON."""
    command, *rest = argv
    result = {"setup": child_setup, "storm": child_storm, "latency": child_latency}[command](*rest)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
