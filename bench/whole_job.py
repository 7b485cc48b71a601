"""Whole jobs as the user waits for them, against bare restic and the peers a user would pick.

Data set: 2,000 small files (1 B .. 50 KiB) and 3 files of 50 MiB, made once under
.cache/bench-data. Three jobs, timed from the command's start to its exit:
- first backup: into a fresh repository with an empty cache;
- unchanged incremental: the same data again;
- one file changed: one small file rewritten (what a change-triggered backup is).

Tools, each with its own repository (a copy of one initialised template, so that every one
pays the same key derivation), its own cache and directories:
- bare restic: the baseline, with henbackup's options (--json --cache-dir --tag --host, and
  --skip-if-unchanged where restic has it);
- henbackup one-shot: `henbackup --config C backup bench`, installed as a user has it
  (`make bench` installs this checkout into .cache/bench-henbackup; without it, the dev
  venv's editable install, which costs every command ~11 ms more);
- henbackup daemon: `henbackupctl backup bench`, waited for, against one daemon started once
  for the bench (per restic version);
- runrestic (`runrestic -c C backup`) and crestic (`crestic backup`, with the baseline's
  options), from their venvs under .cache/bench-peers (`make bench` installs them);
- borgmatic (`borgmatic -c C create`) against bare `borg create` as its own baseline,
  Debian's borg.
In every round each tool runs each job once, in an order rotated from round to round; a
ratio is a tool's time over its baseline's in the same round (the machine may be busy: the
ratio within one round holds better than times across rounds). The table shows the median
and the minimum ratio over the rounds, and the median extra seconds.

henbackup is byte-compiled first, as an installed package is: otherwise, where
PYTHONDONTWRITEBYTECODE is set, every run of the dev venv's henbackup would compile it again.

BENCH_ROUNDS (default 7) and BENCH_RESTIC (default "0.18,0.14") make a run shorter.
"""

from __future__ import annotations

import compileall
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import henbackup
from bench._installed import BIN, INSTALLED, ROOT, environment
from bench.table import Goal, Table

RESTICS = {
    "0.18": ROOT / ".cache" / "restic-trixie" / "usr" / "bin" / "restic",
    "0.14": Path("/usr/bin/restic"),
}
PEERS = ROOT / ".cache" / "bench-peers"
DATA = ROOT / ".cache" / "bench-data"
SMALL_FILES = 2000
SMALL_MAX = 50 * 1024
BIG_FILES = 3
BIG_SIZE = 50 * 2**20
CHANGED_FILE = Path("d00") / "f0000"
PASSWORD = "benchmark password"
CASES = ("first backup", "unchanged incremental", "one file changed")
GOALS = {  # issue 18: what henbackup may cost on top of bare restic, in the same round
    "henbackup daemon": Goal(1.10, "<=", "x"),
    "henbackup one-shot": Goal(1.25, "<=", "x"),
}
BELOW_RUNRESTIC = Goal(1.0, "<", "x")
READY_TIMEOUT = 60.0
JOB_TIMEOUT = 600.0
# What would make the daemon talk to this session's systemd or another configuration.
FOREIGN = (
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "HENBACKUP_CONFIG",
    "HENBACKUP_SOCKET",
    "CREDENTIALS_DIRECTORY",
)


def rounds() -> int:
    return max(1, int(os.environ.get("BENCH_ROUNDS", "7")))


def wanted_restics() -> list[str]:
    wanted = os.environ.get("BENCH_RESTIC", "0.18,0.14")
    return [v.strip() for v in wanted.split(",") if v.strip()]


# the data set
def data_set() -> Path:
    """The data set under .cache/bench-data, made once (a marker says it is complete)."""
    data, marker = DATA / "data", DATA / "complete"
    if marker.exists():
        return data
    shutil.rmtree(DATA, ignore_errors=True)
    rng = random.Random(42)  # reproducible sizes, random contents
    for i in range(SMALL_FILES):
        path = data / f"d{i % 40:02d}" / f"f{i:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(rng.randint(1, SMALL_MAX)))
    for i in range(BIG_FILES):
        (data / f"big{i}").write_bytes(os.urandom(BIG_SIZE))
    marker.write_text(f"{SMALL_FILES} files up to {SMALL_MAX} B, {BIG_FILES} of {BIG_SIZE} B\n")
    return data


def change_one_file(data: Path) -> None:
    """Rewrite one small file with new contents of the same size."""
    path = data / CHANGED_FILE
    path.write_bytes(os.urandom(path.stat().st_size))


def data_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


# running things
class ToolFailed(Exception):
    pass


def timed(argv: Sequence[str], env: dict[str, str], name: str) -> float:
    """Wall seconds from start to exit; raises ToolFailed (with stderr's tail) on failure."""
    start = time.perf_counter()
    done = subprocess.run(
        list(argv),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=JOB_TIMEOUT,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no stderr)"]
        raise ToolFailed(f"{name} exited {done.returncode}: {tail[0][:200]}")
    return seconds


def restic_version(binary: Path) -> tuple[int, ...]:
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True)
    return tuple(int(part) for part in out.stdout.split()[1].split(".")[:3])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env.update(extra)
    return env


@dataclass
class Tool:
    """One way of running a backup: its command, environment and private places."""

    name: str
    place: Path  # repository, cache and config live below it
    template: Path  # an initialised empty repository, copied fresh for each first backup
    argv: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    wipe: tuple[Path, ...] = ()  # caches emptied with the repository
    start: Callable[[], None] | None = None  # once, before the first round
    stop: Callable[[], None] | None = None  # once, at the end

    @property
    def repo(self) -> Path:
        return self.place / "repo"

    def fresh(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)
        shutil.copytree(self.template, self.repo)
        for directory in self.wipe:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)

    def run(self) -> float:
        return timed(self.argv, self.env, self.name)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


# restic and the tools around it
def restic_tools(binary: Path, work: Path, data: Path) -> list[Tool]:
    """bare restic first (the baseline), then henbackup both ways, then the peers found."""
    password = write(work / "password", PASSWORD + "\n")
    template = work / "template"
    init = [str(binary), "init", "--repo", str(template), "--password-file", str(password)]
    subprocess.run(init, check=True, capture_output=True)
    skip = ["--skip-if-unchanged"] if restic_version(binary) >= (0, 17) else []
    tag = ["--tag", "backup-bench", "--host", "bench"]
    tools = []

    bare = Tool("bare restic", work / "bare", template)
    bare.argv = [str(binary), "backup", "--json", "--cache-dir", str(bare.place / "cache"), *tag]
    bare.argv += [*skip, "--", str(data)]
    bare.env = clean_env(RESTIC_REPOSITORY=str(bare.repo), RESTIC_PASSWORD_FILE=str(password))
    bare.wipe = (bare.place / "cache",)
    tools.append(bare)

    for name in ("henbackup one-shot", "henbackup daemon"):
        tool = Tool(name, work / name.replace(" ", "-"), template)
        config = write(
            tool.place / "henbackup.toml",
            f'[daemon]\nhostname = "bench"\nrestic = "{binary}"\n'
            f'[repositories.bench]\nlocation = "{tool.repo}"\npassword_file = "{password}"\n'
            f'[backups.bench]\npaths = ["{data}"]\nrepositories = ["bench"]\n',
        )
        dirs = {
            "RUNTIME_DIRECTORY": tool.place / "run",
            "STATE_DIRECTORY": tool.place / "state",
            "CACHE_DIRECTORY": tool.place / "cache",
        }
        for directory in dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        tool.env = environment(clean_env(**{k: str(v) for k, v in dirs.items()}))
        tool.wipe = (tool.place / "cache",)
        if name == "henbackup one-shot":
            tool.argv = [str(BIN / "henbackup"), "--config", str(config), "backup", "bench"]
        else:
            socket = dirs["RUNTIME_DIRECTORY"] / "control.sock"
            tool.argv = [str(BIN / "henbackupctl"), "--socket", str(socket), "backup", "bench"]
            daemon = Daemon(config, tool.env, tool.place / "daemon.log", socket)
            tool.start, tool.stop = daemon.start, daemon.stop
        tools.append(tool)

    # runrestic and crestic run `restic` from PATH / CRESTIC_EXECUTABLE: this version.
    path_dir = work / "path"
    path_dir.mkdir()
    (path_dir / "restic").symlink_to(binary)
    path = f"{path_dir}:{os.environ.get('PATH', '')}"
    runrestic = PEERS / "runrestic" / "bin" / "runrestic"
    if runrestic.exists():
        tool = Tool("runrestic", work / "runrestic", template)
        config = write(
            tool.place / "runrestic.toml",
            f'name = "bench"\nrepositories = ["{tool.repo}"]\n'
            f'[environment]\nRESTIC_PASSWORD_FILE = "{password}"\n'
            f'RESTIC_CACHE_DIR = "{tool.place / "cache"}"\n'
            f'[backup]\nsources = ["{data}"]\n[prune]\nkeep-last = 10\n',
        )
        tool.argv = [str(runrestic), "-c", str(config), "backup"]
        tool.env = clean_env(PATH=path, HOME=str(tool.place))
        tool.wipe = (tool.place / "cache",)
        tools.append(tool)
    crestic = PEERS / "crestic" / "bin" / "crestic"
    if crestic.exists():
        tool = Tool("crestic", work / "crestic", template)
        options = "\n".join(["json", "tag: backup-bench", "host: bench", *(s[2:] for s in skip)])
        config = write(
            tool.place / "crestic.cfg",
            f"[global]\nrepo: {tool.repo}\npassword-file: {password}\n"
            f"cache-dir: {tool.place / 'cache'}\n"
            f"[global.backup]\n{options}\n_arguments: {data}\n",
        )
        tool.argv = [str(crestic), "backup"]
        tool.env = clean_env(
            PATH=path,
            HOME=str(tool.place),
            CRESTIC_CONFIG_FILE=str(config),
            CRESTIC_EXECUTABLE=str(binary),
        )
        tool.wipe = (tool.place / "cache",)
        tools.append(tool)
    return tools


def borg_tools(work: Path, data: Path) -> list[Tool]:
    """bare `borg create` (the baseline), then borgmatic if its venv is there."""
    borg = shutil.which("borg")
    if borg is None:
        return []
    template = work / "template"
    base_env = {
        "BORG_PASSPHRASE": PASSWORD,
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        "BORG_BASE_DIR": str(work / "init-base"),
    }
    init = [borg, "init", "--encryption", "repokey", str(template)]
    subprocess.run(init, check=True, capture_output=True, env=clean_env(**base_env))
    tools = []
    bare = Tool("bare borg", work / "bare-borg", template)
    # borgmatic's own archive name; BORG_BASE_DIR holds cache and security dirs, which know
    # the template's repository id: each tool gets its own, emptied with its repository.
    archive = f"{bare.repo}::{{hostname}}-{{now:%Y-%m-%dT%H:%M:%S.%f}}"
    bare.argv = [borg, "create", archive, str(data)]
    bare.env = clean_env(**base_env | {"BORG_BASE_DIR": str(bare.place / "base")})
    bare.wipe = (bare.place / "base",)
    tools.append(bare)
    borgmatic = PEERS / "borgmatic" / "bin" / "borgmatic"
    if borgmatic.exists():
        tool = Tool("borgmatic", work / "borgmatic", template)
        config = write(
            tool.place / "borgmatic.yaml",
            f"source_directories:\n  - {data}\nrepositories:\n  - path: {tool.repo}\n"
            f'encryption_passphrase: "{PASSWORD}"\nlocal_path: {borg}\n'
            f"borg_base_directory: {tool.place / 'base'}\n"
            "relocated_repo_access_is_ok: true\n",
        )
        tool.argv = [str(borgmatic), "-c", str(config), "create"]
        tool.env = clean_env(HOME=str(tool.place))
        tool.wipe = (tool.place / "base",)
        tools.append(tool)
    return tools


class Daemon:
    """`henbackup run` started once for the bench; ready when the control socket answers."""

    def __init__(self, config: Path, env: dict[str, str], log: Path, socket: Path) -> None:
        self.config, self.env, self.log, self.socket = config, env, log, socket
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "henbackup"), "--config", str(self.config), "run"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        status = [str(BIN / "henbackupctl"), "--socket", str(self.socket), "status"]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ToolFailed(f"henbackup run exited {self.process.returncode}: see {self.log}")
            done = subprocess.run(status, env=self.env, capture_output=True, check=False)
            if done.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise ToolFailed(f"henbackup run did not answer within {READY_TIMEOUT:g} s: see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# measuring
Times = dict[tuple[str, str], list[float]]  # (tool, case) -> seconds, one per round


def measure(tools: list[Tool], data: Path, count: int, failed: dict[str, str]) -> Times:
    """`count` rounds; each round runs every case for every tool, in a rotated order.
    A tool that fails is added to `failed` and left out from then on."""
    times: Times = {}
    for number in range(count):
        order = tools[number % len(tools) :] + tools[: number % len(tools)]
        for tool in order:
            tool.fresh()
        for case in CASES:
            if case == "one file changed":
                change_one_file(data)
            for tool in order:
                if tool.name in failed:
                    continue
                try:
                    times.setdefault((tool.name, case), []).append(tool.run())
                except (ToolFailed, subprocess.TimeoutExpired) as error:
                    failed[tool.name] = str(error)
    for tool in tools:
        shutil.rmtree(tool.repo, ignore_errors=True)
    return times


@dataclass(frozen=True)
class Ratios:
    """A tool against its baseline over the rounds both completed."""

    median: float
    minimum: float
    extra: float  # median seconds over the baseline
    seconds: float  # the tool's median seconds

    @classmethod
    def of(cls, tool: Sequence[float], baseline: Sequence[float]) -> Ratios:
        pairs = list(zip(tool, baseline, strict=False))  # rounds both completed
        ratios = [t / b for t, b in pairs]
        return cls(
            statistics.median(ratios),
            min(ratios),
            statistics.median(t - b for t, b in pairs),
            statistics.median(tool),
        )


def rows_for(
    label: str, tools: list[Tool], times: Times, failed: dict[str, str]
) -> list[tuple[object, ...]]:
    """One row per tool and case: the first tool is the baseline."""
    baseline = tools[0].name
    rows: list[tuple[object, ...]] = []
    for tool in tools:
        for case in CASES:
            what = f"{tool.name}: {case} ({label})"
            goal = GOALS.get(tool.name, "")
            if tool.name in failed or baseline in failed:
                rows.append((what, "failed", "", "", "", goal))
                continue
            mine, base = times[tool.name, case], times[baseline, case]
            if tool.name == baseline:
                rows.append((what, "baseline", "", statistics.median(mine), "", ""))
                continue
            r = Ratios.of(mine, base)
            rows.append(
                (what, f"{r.median:.2f}x", f"{r.minimum:.2f}x", r.seconds, f"{r.extra:+.2f}", goal)
            )
    for failure in failed.values():
        rows.append((f"  ({label}) {failure}", "", "", "", "", ""))
    return rows


def below_runrestic(label: str, times: Times, failed: dict[str, str]) -> list[tuple[object, ...]]:
    """issue 18: henbackup costs less than runrestic, on the unchanged incremental."""
    case = "unchanged incremental"
    rows: list[tuple[object, ...]] = []
    for name in GOALS:
        if (name, case) not in times or ("runrestic", case) not in times or failed:
            continue
        r = Ratios.of(times[name, case], times["runrestic", case])
        what = f"{name} / runrestic: {case} ({label})"
        rows.append((what, f"{r.median:.2f}x", f"{r.minimum:.2f}x", r.seconds, "", BELOW_RUNRESTIC))
    return rows


def measure_started(tools: Sequence[Tool], data: Path, count: int) -> tuple[Times, dict[str, str]]:
    """Start the tools that need it (a daemon), time them all, stop them; a tool that
    could not start is in the failures (its reason), untimed."""
    failed: dict[str, str] = {}
    started: list[Tool] = []
    try:
        for tool in tools:
            if tool.start is not None:
                tool.fresh()
                try:
                    tool.start()
                except ToolFailed as error:
                    failed[tool.name] = str(error)
                    continue
            started.append(tool)
        return measure(list(tools), data, count, failed), failed
    finally:
        for tool in started:
            if tool.stop is not None:
                tool.stop()


def run_group(
    label: str, make: Callable[[Path], list[Tool]], data: Path, count: int
) -> list[tuple[object, ...]]:
    with tempfile.TemporaryDirectory(prefix="bench-whole-job-", dir=ROOT / ".cache") as scratch:
        tools = make(Path(scratch))
        times, failed = measure_started(tools, data, count)
    return rows_for(label, tools, times, failed) + below_runrestic(label, times, failed)


def run() -> Table:
    if BIN != INSTALLED:  # pip compiled the installed one
        compileall.compile_dir(Path(henbackup.__file__).parent, quiet=1)
    data = data_set()
    count = rounds()
    rows: list[tuple[object, ...]] = []
    notes = []
    for version in wanted_restics():
        binary = RESTICS.get(version)
        if binary is None or not binary.exists():
            notes.append(f"restic {version}: not found ({binary}); `make bench` fetches 0.18")
            continue
        label = "restic " + ".".join(map(str, restic_version(binary)))
        rows += run_group(label, lambda work, b=binary: restic_tools(b, work, data), data, count)
    if shutil.which("borg"):
        label = subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout
        rows += run_group(label.strip(), lambda work: borg_tools(work, data), data, count)
    else:
        notes.append("borg: not installed (`make bench` installs Debian's borgbackup)")
    if BIN != INSTALLED:
        notes.append("henbackup: the dev venv's editable install (`make bench` installs it)")
    missing = [p for p in ("runrestic", "crestic", "borgmatic") if not (PEERS / p).exists()]
    if missing:
        notes.append(f"not installed: {', '.join(missing)} (`make bench` installs them)")
    return Table(
        f"whole_job: whole jobs as the user waits for them, {data_bytes(data) / 1e6:.0f} MB,"
        f" {count} rounds, ratio to the baseline in the same round",
        ("job", "median ratio", "min ratio", "median s", "median +s", "goal"),
        tuple(rows),
        (
            *notes,
            "baselines: bare restic with henbackup's options; bare borg create for borgmatic.",
            "runrestic cannot pass --tag/--host/--skip-if-unchanged; crestic passes the same.",
            "borgmatic runs `borg --version` and a `borg create --dry-run --list` before create.",
        ),
        value_column="median ratio",
    )


if __name__ == "__main__":
    print(run().render())
