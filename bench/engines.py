"""henbackup on borg against bare borg, and restic beside borg through henbackup.

whole_job's data set, jobs (first backup, unchanged incremental, one file changed), rounds
and rotation (its `measure`), in one run of five tools:
- bare borg: `borg create` with henbackup's options (--log-json --lock-wait, create --json
  --progress --list --filter AME --comment, an archive name of ours), the password from the
  same command and BORG_BASE_DIR of its own: the baseline of the first table;
- henbackup one-shot and henbackup daemon on a borg repository (engine = "borg"): their
  ratio to bare borg in the same round, with the goals of whole_job's restic rows;
- henbackup one-shot on a restic repository (restic 0.18 if there, else 0.14): for the
  second table, restic and borg through henbackup side by side: the median seconds of
  each job and the size of each repository after the last round's three jobs.

Each tool has a repository copied from one initialised template per engine (so every one
pays the same key derivation) and its own cache, emptied with the repository (but for
henbackup's note of `borg --version`, which a real first backup pays once per binary).
BENCH_ROUNDS (default 7) as whole_job.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.table import Table
from bench.whole_job import (
    BIN,
    CASES,
    PASSWORD,
    RESTICS,
    ROOT,
    Daemon,
    Times,
    Tool,
    ToolFailed,
    clean_env,
    data_bytes,
    data_set,
    measure_started,
    restic_version,
    rounds,
    rows_for,
    write,
)

BORG_OPTIONS = ("--log-json", "--lock-wait", "1")
BORG_CREATE = ("create", "--json", "--progress", "--list", "--filter", "AME")


def directory_size(path: Path) -> int:
    """Bytes of the regular files under `path` (what the repository holds)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class SizedTool(Tool):
    """A Tool that notes its repository's size after each run (the last one stays)."""

    sizes: dict[str, int] = field(default_factory=dict)

    def run(self) -> float:
        seconds = super().run()
        self.sizes[self.name] = directory_size(self.repo)
        return seconds


def henbackup_tool(
    name: str,
    work: Path,
    template: Path,
    engine: tuple[str, str],
    data: Path,
    sizes: dict[str, int],
    daemon: bool = False,
) -> SizedTool:
    """henbackup, one-shot or through its daemon, backing `data` up to its own repository
    of `engine` (name, binary)."""
    tool = SizedTool(name, work / name.replace(" ", "-"), template, sizes=sizes)
    engine, binary = engine
    password = work / "password"
    config = write(
        tool.place / "henbackup.toml",
        f'[daemon]\nhostname = "bench"\n{engine} = "{binary}"\n'
        f'[repositories.bench]\nengine = "{engine}"\nlocation = "{tool.repo}"\n'
        f'password_file = "{password}"\n'
        f'[backups.bench]\npaths = ["{data}"]\nrepositories = ["bench"]\n',
    )
    dirs = {key: tool.place / key.split("_")[0].lower() for key in _DIRS}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    tool.env = clean_env(**{k: str(v) for k, v in dirs.items()})
    # borg's cache and security records go with the repository; the record of `borg
    # --version` stays, as it does from job to job (asked once per binary: 0.3 s or more).
    cache = dirs["CACHE_DIRECTORY"]
    tool.wipe = (cache / "borg",) if engine == "borg" else (cache,)
    if not daemon:
        tool.argv = [str(BIN / "henbackup"), "--config", str(config), "backup", "bench"]
        return tool
    socket = dirs["RUNTIME_DIRECTORY"] / "control.sock"
    tool.argv = [str(BIN / "henbackupctl"), "--socket", str(socket), "backup", "bench"]
    process = Daemon(config, tool.env, tool.place / "daemon.log", socket)
    tool.start, tool.stop = process.start, process.stop
    return tool


_DIRS = ("RUNTIME_DIRECTORY", "STATE_DIRECTORY", "CACHE_DIRECTORY")


def borg_template(borg: str, work: Path) -> Path:
    template = work / "borg-template"
    env = clean_env(BORG_PASSPHRASE=PASSWORD, BORG_BASE_DIR=str(work / "init-base"))
    init = [borg, "init", "--encryption", "repokey", str(template)]
    subprocess.run(init, check=True, capture_output=True, env=env)
    return template


def restic_template(restic: Path, work: Path) -> Path:
    template = work / "restic-template"
    password = work / "password"
    init = [str(restic), "init", "--repo", str(template), "--password-file", str(password)]
    subprocess.run(init, check=True, capture_output=True)
    return template


def tools(borg: str, restic: Path, work: Path, data: Path) -> list[SizedTool]:
    """bare borg (the baseline), henbackup on borg both ways, henbackup one-shot on restic."""
    write(work / "password", PASSWORD + "\n")
    borgs, restics = borg_template(borg, work), restic_template(restic, work)
    sizes: dict[str, int] = {}  # every tool's, by name
    bare = SizedTool("bare borg", work / "bare-borg", borgs, sizes=sizes)
    comment = json.dumps({"paths": [str(data)]}).replace("{", "{{").replace("}", "}}")
    name = "::bench@bench@{now:%Y-%m-%dT%H:%M:%S.%f}"
    bare.argv = [borg, *BORG_OPTIONS, *BORG_CREATE, "--comment", comment, "--", name, str(data)]
    bare.env = clean_env(
        BORG_REPO=str(bare.repo),
        BORG_PASSCOMMAND=f"cat -- {work / 'password'}",
        BORG_BASE_DIR=str(bare.place / "base"),
        BORG_HOSTNAME_IS_UNIQUE="yes",
    )
    bare.wipe = (bare.place / "base",)
    on_borg, on_restic = ("borg", borg), ("restic", str(restic))
    return [
        bare,
        henbackup_tool("henbackup one-shot", work, borgs, on_borg, data, sizes),
        henbackup_tool("henbackup daemon", work, borgs, on_borg, data, sizes, daemon=True),
        henbackup_tool("henbackup on restic", work, restics, on_restic, data, sizes),
    ]


def measured(
    borg: str, restic: Path, data: Path, count: int
) -> tuple[list[SizedTool], Times, dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="bench-engines-", dir=ROOT / ".cache") as scratch:
        found = tools(borg, restic, Path(scratch), data)
        times, failed = measure_started(found, data, count)
    return found, times, failed


def side_by_side(
    restic_label: str, borg_label: str, found: list[SizedTool], times: Times, failed: dict[str, str]
) -> Table:
    """restic and borg through henbackup one-shot: seconds per job, and repository size."""
    restic, borg = "henbackup on restic", "henbackup one-shot"
    rows: list[tuple[object, ...]] = []
    for case in CASES:
        if restic in failed or borg in failed:
            rows.append((case, "failed", "failed", ""))
            continue
        r, b = statistics.median(times[restic, case]), statistics.median(times[borg, case])
        rows.append((case, r, b, f"{b / r:.2f}x"))
    sizes = found[0].sizes
    if restic in sizes and borg in sizes:
        r_mb, b_mb = sizes[restic] / 1e6, sizes[borg] / 1e6
        rows.append(("repository size, MB", f"{r_mb:.1f}", f"{b_mb:.1f}", f"{b_mb / r_mb:.2f}x"))
    return Table(
        "engines: restic and borg side by side through henbackup (one-shot), median s",
        ("job", restic_label, borg_label, "borg / restic"),
        tuple(rows),
        (
            "repository size: its files after the last round's three jobs (no retention).",
            "restic compresses (auto), borg 1.2 with lz4: the data set's random bytes do not"
            " compress.",
            *(f"  {failure}" for failure in failed.values()),
        ),
    )


def run() -> list[Table]:
    borg = shutil.which("borg")
    if borg is None:
        raise ToolFailed("borg is not installed (`make bench` installs Debian's borgbackup)")
    restic = next((RESTICS[v] for v in ("0.18", "0.14") if RESTICS[v].exists()), None)
    if restic is None:
        raise ToolFailed("no restic found (`make bench` fetches 0.18)")
    data, count = data_set(), rounds()
    found, times, failed = measured(borg, restic, data, count)
    borg_label = subprocess.run([borg, "--version"], capture_output=True, text=True).stdout
    borg_label = borg_label.strip()
    restic_label = "restic " + ".".join(map(str, restic_version(restic)))
    overhead = Table(
        f"engines: henbackup on borg against bare borg create, {data_bytes(data) / 1e6:.0f} MB,"
        f" {count} rounds, ratio to the baseline in the same round",
        ("job", "median ratio", "min ratio", "median s", "median +s", "goal"),
        tuple(rows_for(borg_label, found[:3], times, failed)),
        ("baseline: bare borg create with henbackup's options; goals as restic's (issue 18).",),
        value_column="median ratio",
    )
    return [overhead, side_by_side(restic_label, borg_label, found, times, failed)]


if __name__ == "__main__":
    for table in run():
        print(table.render(), end="\n\n")
