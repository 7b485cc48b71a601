"""What ResticEngine costs on top of restic itself.

200 MB of random data (2,000 small files and 3 files of 50 MB). For each restic version,
a first backup into a fresh local repository and an unchanged incremental backup, each run
by bare restic (the engine's own argv and environment, output to /dev/null) and through
ResticEngine (a new engine per run, so its one `restic version` is counted). Repetitions
alternate which goes first; the table shows median wall times.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.table import Table
from henbackup.config.model import PasswordSource
from henbackup.engine.base import BackupRequest, Target
from henbackup.engine.restic import (
    ResticEngine,
    backup_args,
    child_env,
    global_flags,
    make_command,
    password_env,
)

ROOT = Path(__file__).resolve().parent.parent
RESTIC_TRIXIE = ROOT / ".cache" / "restic-trixie" / "usr" / "bin" / "restic"
REPETITIONS = 5
SMALL_FILES = 2000
SMALL_MAX = 50 * 1024  # small files are 1 B .. 50 KiB: about 50 MB in all
BIG_FILES = 3
BIG_SIZE = 50 * 2**20
GOAL = 1.02


def binaries() -> list[str]:
    """restic 0.14 from PATH, and 0.18 where `make test` fetched it."""
    found = [shutil.which("restic"), str(RESTIC_TRIXIE) if RESTIC_TRIXIE.exists() else None]
    return [b for b in found if b]


def make_data(root: Path) -> int:
    """Write the data set; returns its size in bytes."""
    rng = random.Random(42)  # the sizes are reproducible, the contents random
    total = 0
    for i in range(SMALL_FILES):
        path = root / f"d{i % 40:02d}" / f"f{i:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1, SMALL_MAX)
        path.write_bytes(os.urandom(size))
        total += size
    for i in range(BIG_FILES):
        (root / f"big{i}").write_bytes(os.urandom(BIG_SIZE))
        total += BIG_SIZE
    return total


class Setup:
    """One restic version: a template repository, a data set, a scratch area."""

    def __init__(self, binary: str, work: Path, data: Path) -> None:
        self.binary = binary
        self.work = work
        secret = work / "password"
        secret.write_text("benchmark password\n")
        self.password = PasswordSource("file", str(secret))
        self.template = work / "template"
        ResticEngine(binary, cache_dir=work / "cache-template").ensure_initialized(
            self.target(self.template)
        )
        self.features = ResticEngine(binary).features
        self.request = BackupRequest("bench", (str(data),), host="bench")
        self.runs = 0

    def target(self, repo: Path) -> Target:
        return Target("bench", str(repo), self.password)

    def fresh(self) -> tuple[Target, Path]:
        """A new empty repository (a copy: init calibrates its KDF for a while) and cache."""
        self.runs += 1
        place = self.work / f"run{self.runs}"
        shutil.copytree(self.template, place / "repo")
        return self.target(place / "repo"), place / "cache"

    def bare(self, target: Target, cache: Path) -> float:
        args = backup_args(self.request, self.features.skip_if_unchanged)
        argv = make_command(self.binary, args, global_flags(target, cache))
        env = child_env(os.environ, target, password_env(target.password))
        start = time.perf_counter()
        subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        return time.perf_counter() - start

    def engine(self, target: Target, cache: Path) -> float:
        start = time.perf_counter()
        ResticEngine(self.binary, cache_dir=cache).backup(target, self.request)
        return time.perf_counter() - start


def measure(setup: Setup) -> dict[tuple[str, str], list[float]]:
    """Wall times by (operation, way): first backup, then the unchanged incremental."""
    times: dict[tuple[str, str], list[float]] = {}
    ways: dict[str, Callable[[Target, Path], float]] = {"bare": setup.bare, "engine": setup.engine}
    for rep in range(REPETITIONS):
        order = ["bare", "engine"] if rep % 2 == 0 else ["engine", "bare"]
        for way in order:
            target, cache = setup.fresh()
            times.setdefault(("first backup", way), []).append(ways[way](target, cache))
            times.setdefault(("unchanged incremental", way), []).append(ways[way](target, cache))
            shutil.rmtree(Path(target.location).parent)
    return times


def version_cost(binary: str) -> float:
    """Median seconds of the engine's one-off `restic version` (included in its times)."""
    samples = []
    for _ in range(REPETITIONS):
        start = time.perf_counter()
        _ = ResticEngine(binary).features
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def rows_for(setup: Setup) -> list[tuple[object, ...]]:
    results = measure(setup)
    version = ".".join(map(str, setup.features.version))
    rows: list[tuple[object, ...]] = []
    for operation in ("first backup", "unchanged incremental"):
        bare = statistics.median(results[operation, "bare"])
        engine = statistics.median(results[operation, "engine"])
        ratio = engine / bare
        goal = f"<= {GOAL} {'met' if ratio <= GOAL else 'MISSED'}"
        rows.append((version, operation, bare, engine, f"{ratio:.3f}", goal))
    return rows


def run() -> Table:
    rows: list[tuple[object, ...]] = []
    notes: list[str] = []
    saved = os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="henbackup-bench-") as scratch:
        work = Path(scratch)
        (work / "tmp").mkdir()
        os.environ["TMPDIR"] = str(work / "tmp")  # restic's temporary packs stay out of /tmp
        try:
            size = make_data(work / "data")
            for number, binary in enumerate(binaries()):
                (work / f"restic{number}").mkdir()
                setup = Setup(binary, work / f"restic{number}", work / "data")
                rows += rows_for(setup)
                version = ".".join(map(str, setup.features.version))
                cost = version_cost(binary) * 1000
                notes.append(f"restic {version}: the engine's `restic version` takes {cost:.0f} ms")
        finally:
            if saved is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved
    return Table(
        title=f"engine_overhead: backup of {size / 1e6:.0f} MB, median of {REPETITIONS} (seconds)",
        headers=("restic", "operation", "bare", "engine", "engine/bare", "goal"),
        rows=tuple(rows),
        notes=tuple(notes),
    )
