"""ResticEngine against real restic binaries (0.14 and 0.18) on local repositories.

Every test runs once per restic version through the `restic` fixture. Synchronisation is
by polling with a deadline, never by fixed sleeps. What every engine does alike (init,
backup, snapshots, restore, retention, check, failures, locks, cancel) is tested once for
each in test_engine_contract.py; here is what is restic's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest

from henbackup.config.model import PasswordSource
from henbackup.engine.base import BackupRequest, BackupResult, Target, TransferProgress
from henbackup.engine.restic import ResticEngine
from henbackup.errors import AccessRefused, EngineError, JobCancelled, StopRequested

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
PR_SET_CHILD_SUBREAPER = 36
ROOT = Path(__file__).resolve().parents[2]


# --- helpers --------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def restored(destination: Path, source: Path) -> Path:
    """Where restic puts `source` when restoring into `destination` (full path kept)."""
    return destination / source.relative_to("/")


@dataclass(frozen=True)
class Repo:
    binary: str
    path: Path
    tmp: Path
    target: Target
    engine: ResticEngine

    def bare_env(self, password: str = PASSWORD) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        return env | {
            "RESTIC_REPOSITORY": str(self.path),
            "RESTIC_PASSWORD": password,
            "RESTIC_CACHE_DIR": str(self.tmp / "cache-bare"),
        }

    def bare(self, *args: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        """restic itself, to verify what the engine did."""
        return subprocess.run(
            [self.binary, *args], env=self.bare_env(password), capture_output=True, text=True
        )

    def locks(self) -> set[str]:
        # The local backend writes a file as NAME-tmp-N, then renames it: not a lock yet.
        return {name for name in os.listdir(self.path / "locks") if "-tmp-" not in name}

    def engine_with(self, **kwargs: object) -> ResticEngine:
        return ResticEngine(self.binary, cache_dir=self.tmp / "cache", **kwargs)  # type: ignore[arg-type]

    def backup(self, name: str, *paths: Path, host: str = "h1", **kw: object) -> BackupResult:
        request = BackupRequest(name, tuple(str(p) for p in paths), host=host)
        return self.engine.backup(self.target, request, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def template(restic: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty repository per restic version: `init` calibrates its KDF for seconds."""
    path = tmp_path_factory.mktemp("template") / "repo"
    engine = ResticEngine(restic, cache_dir=path.parent / "cache")
    engine.ensure_initialized(Target("t", str(path), PasswordSource("password", PASSWORD)))
    return path


@pytest.fixture
def repo(restic: str, template: Path, tmp_path: Path) -> Repo:
    """A fresh, empty repository (a copy of the template) and an engine for it."""
    shutil.copytree(template, tmp_path / "repo")
    engine = ResticEngine(restic, cache_dir=tmp_path / "cache")
    target = Target("test", str(tmp_path / "repo"), PasswordSource("password", PASSWORD))
    return Repo(restic, tmp_path / "repo", tmp_path, target, engine)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "src",
        {
            "a.txt": b"hello\n",
            "dir/b.bin": os.urandom(300_000),
            "dir/sub/empty": b"",
            "dir/sub/d.txt": b"x" * 5000,
            "other/e": os.urandom(10_000),
        },
    )


@contextlib.contextmanager
def lock_holder(repo: Repo) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A live `restic backup --stdin` holding a lock until its stdin is closed."""
    before = repo.locks()
    holder = subprocess.Popen(
        [repo.binary, "backup", "--stdin", "--stdin-filename", "held", "--host", "holder"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=repo.bare_env(),
    )
    assert holder.stdin is not None
    holder.stdin.write(b"held data\n")  # restic 0.14 refuses an empty snapshot
    holder.stdin.flush()
    try:
        wait_until(lambda: len(repo.locks() - before) == 1, "the holder's lock")
        (lock,) = repo.locks() - before
        yield holder, lock
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


@contextlib.contextmanager
def on_alarm(action: Callable[[], None]) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        action()

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sparse_file(path: Path, size: int = 50 * 2**30) -> Path:
    """A large file that costs no disk: restic still reads (and chunks) every byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(size)
    return path


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Orphans of our children become ours: a test can reap them, so know they are gone.

    (Left to PID 1, a dead restic may linger as a zombie, and restic takes a lock of a
    zombie for a live one.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reaped(pid: int) -> bool:
    """True once `pid`, a child (or an adopted orphan) of ours, has exited and been reaped."""
    with contextlib.suppress(ChildProcessError):
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    return False


# --- init, backup, snapshots ----------------------------------------------------------


def test_backup_then_incremental(
    repo: Repo, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    first = repo.backup("docs", source)
    assert first.snapshot_id is not None
    assert (first.files_new, first.files_changed, first.files_unmodified) == (5, 0, 0)
    assert first.bytes_processed == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert first.bytes_added > 300_000
    assert first.warnings == ()

    (source / "dir" / "sub" / "d.txt").write_bytes(b"y" * 6000)  # changed (new size)
    (source / "new.txt").write_bytes(b"new\n")
    second = repo.backup("docs", source)
    assert (second.files_new, second.files_changed, second.files_unmodified) == (1, 1, 4)
    assert second.snapshot_id not in (None, first.snapshot_id)

    # restic records the metadata of every ancestor of a path (/tmp...): if one changed,
    # 0.17+ still makes a snapshot. Its own temporary files go elsewhere, so /tmp settles.
    for _ in range(5):
        unchanged = repo.backup("docs", source)
        counts = (unchanged.files_new, unchanged.files_changed, unchanged.files_unmodified)
        assert counts == (0, 0, 6)
        if not repo.engine.features.skip_if_unchanged:
            assert unchanged.snapshot_id is not None
            break
        if unchanged.snapshot_id is None:
            assert unchanged.bytes_added == 0
            break
    else:
        pytest.fail("restic --skip-if-unchanged never skipped")


def test_snapshots_say_what_they_added_from_restic_0_17(repo: Repo, source: Path) -> None:
    repo.backup("docs", source, host="h1")
    (first,) = repo.engine.snapshots(repo.target)
    if repo.engine.features.exit_codes:  # 0.17+ stores a summary in the snapshot
        assert first.bytes_added is not None and first.bytes_added > 300_000
    else:
        assert first.bytes_added is None


def test_unreadable_source_file_still_makes_a_snapshot(repo: Repo, source: Path) -> None:
    # Reading another process's memory at offset 0 fails (EIO, or EACCES without ptrace
    # rights): a dependable "could not be read" (restic exit code 3), even as root.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        unreadable = f"/proc/{sleeper.pid}/mem"
        result = repo.backup("docs", source, Path(unreadable))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.snapshot_id is not None
    assert result.files_new == 5
    assert any(unreadable in w for w in result.warnings), result.warnings


RETRY = "returned error, retrying after 1s: 403 Forbidden"  # no "/": a file name
HOSTILE_NAMES = (
    "wrong password or no key found",
    "repository is already locked by PID 1",
    "repository does not exist",
    *(f"x{n} {RETRY}" for n in range(3)),
    *(f"y{n}\nLoad(<config>, 0, 0) {RETRY}" for n in range(3)),  # a line of its own?
)


@pytest.fixture
def as_nobody(restic: str, template: Path) -> Iterator[tuple[ResticEngine, Target, Path]]:
    """restic run as nobody (as root, every file is readable), on a repository of its own."""
    place = Path(tempfile.mkdtemp(prefix="henbackup-nobody-"))  # pytest's is root's, 0700
    try:
        place.chmod(0o755)
        shutil.copytree(template, place / "repo")
        (place / "cache").mkdir()
        for path in (place / "repo", place / "cache"):
            subprocess.run(["chown", "-R", "nobody:nogroup", str(path)], check=True)
        wrapper = place / "restic"
        wrapper.write_text(
            f'#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {restic} "$@"\n'
        )
        wrapper.chmod(0o755)
        (place / "password").write_text(PASSWORD)  # a pipe of root's, nobody cannot open
        (place / "password").chmod(0o644)
        target = Target(
            "test", str(place / "repo"), PasswordSource("file", str(place / "password"))
        )
        yield ResticEngine(str(wrapper), cache_dir=place / "cache"), target, place
    finally:
        shutil.rmtree(place)


def test_names_of_files_restic_could_not_read_are_not_taken_for_its_words(
    as_nobody: tuple[ResticEngine, Target, Path],
) -> None:
    """restic names each file it could not read: a local user chooses those names. Taken
    for restic's own words, one failed a saved backup (wrong password), backed up twice
    (locked, missing), or stopped it midway and left its lock (a refused retry)."""
    engine, target, place = as_nobody
    source = write_tree(place / "src", {"readable.txt": b"kept\n"})
    for name in HOSTILE_NAMES:
        (source / name).mkdir(mode=0)
    result = engine.backup(target, BackupRequest("docs", (str(source),)))
    assert result.snapshot_id is not None
    assert result.files_new == 1
    for name in HOSTILE_NAMES:  # each on one line
        assert any(" ".join(name.split()) in warning for warning in result.warnings), name
    assert not [warning for warning in result.warnings if "None" in warning]  # 0.14 says why
    assert [s.id[:8] for s in engine.snapshots(target)] == [result.snapshot_id[:8]]
    assert os.listdir(place / "repo" / "locks") == []


# --- failures -------------------------------------------------------------------------


@pytest.mark.slow
def test_lock_wait_succeeds_once_the_holder_is_done(repo: Repo, source: Path) -> None:
    repo.backup("docs", source)
    engine = repo.engine_with(lock_wait=60.0)
    with lock_holder(repo) as (holder, _lock), on_alarm(lambda: holder.stdin.close()):  # type: ignore[union-attr]
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        start = time.monotonic()
        result = engine.check(repo.target)
        waited = time.monotonic() - start
        assert holder.wait(timeout=30) == 0
    assert result.ok
    assert waited >= 1.0


# --- cancellation and death -----------------------------------------------------------


@pytest.mark.slow
def test_cancellation_leaves_the_repository_clean(repo: Repo, tmp_path: Path) -> None:
    big = sparse_file(tmp_path / "big" / "sparse")
    pids: list[int] = []
    engine = repo.engine_with(on_spawn=pids.append)
    progress: list[TransferProgress] = []

    def on_progress(report: TransferProgress) -> None:
        if not progress:  # restic is busy: cancel in a moment, from a signal handler
            signal.setitimer(signal.ITIMER_REAL, 0.3)
        progress.append(report)

    fired: list[float] = []

    def cancel() -> None:
        fired.append(time.monotonic())
        raise JobCancelled("cancelled by the test")

    request = BackupRequest("big", (str(big),), host="h1")
    # A job process may block SIGINT; the mask survives exec, and restic (Go) unblocks it.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with on_alarm(cancel), pytest.raises(JobCancelled):
            engine.backup(repo.target, request, on_progress=on_progress)
            pytest.fail("the backup finished before it could be cancelled")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    # restic stopped on SIGINT, well before the grace period that ends in SIGKILL
    assert time.monotonic() - fired[0] < 10
    assert progress and progress[0].total_bytes in (None, big.stat().st_size)
    assert not Path(f"/proc/{pids[-1]}").exists()  # reaped by the engine
    assert repo.locks() == set()
    checked = repo.bare("check")
    assert checked.returncode == 0, checked.stderr
    assert repo.engine.snapshots(repo.target) == []


@pytest.mark.slow
def test_a_stop_during_the_unlock_after_a_cancel_waits_for_it(repo: Repo, tmp_path: Path) -> None:
    """The unlock after an interrupt is short and bounded: a stop asked meanwhile is acted
    on once it is done, not by killing it (restic 0.14 interrupted early leaves its lock,
    which only that unlock removes)."""
    log, wrapper = tmp_path / "unlocks.log", tmp_path / "restic"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = unlock ]; then {repo.binary} "$@"; echo "unlock $?" >> {log};'
        f' exit 0; fi\nexec {repo.binary} "$@"\n'
    )
    wrapper.chmod(0o755)
    busy: list[bool] = []

    def checkpoint() -> None:
        if busy == [True]:  # restic is busy: cancelled
            busy.append(True)
            raise JobCancelled("cancelled by the test")
        if busy:  # and then, while it cleans up, stopped
            raise StopRequested("henbackup is stopping")

    engine = ResticEngine(str(wrapper), cache_dir=tmp_path / "cache", checkpoint=checkpoint)
    request = BackupRequest("big", (str(sparse_file(tmp_path / "big" / "sparse")),))
    with pytest.raises(JobCancelled) as raised:
        engine.backup(repo.target, request, on_progress=lambda report: busy[:] or busy.append(True))
    assert type(raised.value) is JobCancelled  # the stop comes after
    assert log.read_text() == "unlock 0\n"
    assert repo.locks() == set()


SCRIPT = """
import sys
from pathlib import Path
from henbackup.config.model import PasswordSource
from henbackup.engine.base import BackupRequest, Target
from henbackup.engine.restic import ResticEngine

binary, repo, cache, data, pidfile = sys.argv[1:]
def spawned(pid):
    Path(pidfile).write_text(str(pid))
engine = ResticEngine(binary, cache_dir=Path(cache), on_spawn=spawned)
target = Target("t", repo, PasswordSource("password", "correct horse battery staple"))
engine.backup(target, BackupRequest("big", (data,)))
"""


@pytest.mark.slow
def test_restic_dies_with_its_parent(repo: Repo, tmp_path: Path) -> None:
    big = sparse_file(tmp_path / "big" / "sparse")
    pidfile = tmp_path / "restic.pid"
    argv = [sys.executable, "-c", SCRIPT, repo.binary, str(repo.path), str(tmp_path / "cache")]
    with subreaper():
        job = subprocess.Popen([*argv, str(big), str(pidfile)], cwd=ROOT)
        try:
            wait_until(lambda: pidfile.exists() and pidfile.read_text() != "", "restic to start")
            restic_pid = int(pidfile.read_text())
            job.kill()
            job.wait()
            wait_until(lambda: reaped(restic_pid), "restic to die with its parent")
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    repo.engine.unlock_stale(repo.target)  # in case it died writing to the broken stdout
    assert repo.locks() == set()
    assert repo.engine.check(repo.target).ok


def test_a_repository_on_a_read_only_file_system_fails_at_once_saying_so(
    repo: Repo, source: Path, tmp_path: Path
) -> None:
    """restic 0.18 retried its lock for 15 minutes, so the job held its slot until the stall
    watch ended it; 0.14 failed saying only that it could not create its lock."""
    mounted = tmp_path / "ro"
    mounted.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mounted)], check=True)
    try:
        shutil.copytree(repo.path, mounted / "repo")
        subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
        target = Target("test", str(mounted / "repo"), PasswordSource("password", PASSWORD))
        request = BackupRequest("docs", (str(source),), host="h1")
        with pytest.raises(AccessRefused) as refused:
            repo.engine.backup(target, request)
        assert str(refused.value) == (
            "repository test cannot be written (read-only file system): mount it read-write"
        )
    finally:
        subprocess.run(["umount", "--lazy", str(mounted)], check=True)


def test_a_repository_whose_init_was_interrupted_is_not_initialised_again(repo: Repo) -> None:
    """A key and no config (an init killed between the two): restic 0.14 added a second key
    with another master key, and every backup then failed on it."""
    (repo.path / "config").unlink()
    keys = sorted(os.listdir(repo.path / "keys"))
    with pytest.raises(EngineError) as error:
        repo.engine.ensure_initialized(repo.target)
    assert str(error.value) == (
        "repository test has a key but no config: its init was interrupted; if it holds"
        " nothing else, remove it and the next backup makes it anew"
    )
    assert sorted(os.listdir(repo.path / "keys")) == keys
