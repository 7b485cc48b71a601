"""The Engine contract, once for every engine: restic 0.14, restic 0.18 and borg 1.2.

Each test runs on real binaries and local repositories, through the repository's engine as
jobs get it (engine/engines.py picks it from the target's `engine`). What only one engine
has (restic's versions, borg's archive names) is tested in that engine's own file; what
differs between engines on purpose is said where a test allows for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import test_restic_engine
from test_restic_engine import (  # the integration helpers, not copies of them
    digest_tree,
    on_alarm,
    restored,
    sparse_file,
    wait_until,
    write_tree,
)

from henbackup.config.model import PasswordSource, Retention
from henbackup.engine.base import BackupRequest, BackupResult, Target, TransferProgress
from henbackup.engine.engines import Engines
from henbackup.errors import (
    BackendUnreachable,
    JobCancelled,
    RepositoryLocked,
    RepositoryMissing,
    SnapshotNotFound,
    WrongPassword,
)
from tests.conftest import _restic_binaries as restic_binaries

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
BORG = shutil.which("borg")
KINDS = ["borg-1.2", "restic-0.14", "restic-0.18"]


def _binary(kind: str) -> str | None:
    if kind.startswith("borg"):
        return BORG
    return restic_binaries()[kind]


@pytest.fixture(params=KINDS, scope="session")
def kind(request: pytest.FixtureRequest) -> str:
    """An engine and its version; every contract test runs once per kind."""
    binary = _binary(request.param)
    if binary is None:
        pytest.skip(f"{request.param} is not installed: run `make test` to set it up")
    program, _, version = request.param.partition("-")
    asked = ["--version"] if program == "borg" else ["version"]
    said = subprocess.run([binary, *asked], capture_output=True, text=True, check=True)
    assert f"{program} {version}" in said.stdout, said.stdout
    return request.param


@dataclass(frozen=True)
class Kit:
    """One fresh repository of one engine, the engine as jobs get it, and the tool itself."""

    kind: str
    binary: str
    path: Path
    tmp: Path
    target: Target
    engine: Engines

    @property
    def borg(self) -> bool:
        return self.kind.startswith("borg")

    def bare_env(self, password: str = PASSWORD) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "BORG_"))}
        if self.borg:
            return env | {
                "BORG_REPO": str(self.path),
                "BORG_PASSPHRASE": password,
                "BORG_BASE_DIR": str(self.tmp / "borg-bare"),
            }
        return env | {
            "RESTIC_REPOSITORY": str(self.path),
            "RESTIC_PASSWORD": password,
            "RESTIC_CACHE_DIR": str(self.tmp / "cache-bare"),
        }

    def bare_list(self, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        """The tool's own listing, opened with `password`."""
        command = "list" if self.borg else "snapshots"
        return subprocess.run(
            [self.binary, command], env=self.bare_env(password), capture_output=True, text=True
        )

    def bare_check(self) -> subprocess.CompletedProcess[str]:
        """The tool's own check, to verify what the engine left."""
        return subprocess.run(
            [self.binary, "check"], env=self.bare_env(), capture_output=True, text=True
        )

    def locks(self) -> set[str]:
        """The repository's lock files."""
        if self.borg:
            folder = self.path / "lock.exclusive"
            return set(os.listdir(folder)) if folder.is_dir() else set()
        # The local backend writes a file as NAME-tmp-N, then renames it: not a lock yet.
        return {name for name in os.listdir(self.path / "locks") if "-tmp-" not in name}

    def engines(self, **settings: object) -> Engines:
        binaries = {self.kind.partition("-")[0]: self.binary}
        return Engines(binaries, cache_dir=self.tmp / "cache", **settings)  # type: ignore[arg-type]

    def backup(self, name: str, *paths: Path, host: str = "h1") -> BackupResult:
        request = BackupRequest(name, tuple(str(p) for p in paths), host=host)
        return self.engine.backup(self.target, request)

    @contextlib.contextmanager
    def lock_holder(self) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
        """A live process of the tool holding a lock on the repository until it is ended."""
        before = self.locks()
        if self.borg:
            argv = [self.binary, "with-lock", "::", "sleep", "600"]
            holder = subprocess.Popen(argv, env=self.bare_env(), start_new_session=True)
        else:
            argv = [self.binary, "backup", "--stdin", "--stdin-filename", "held"]
            holder = subprocess.Popen(
                argv, stdin=subprocess.PIPE, env=self.bare_env(), start_new_session=True
            )
            assert holder.stdin is not None
            holder.stdin.write(b"held data\n")  # restic 0.14 refuses an empty snapshot
            holder.stdin.flush()
        try:
            wait_until(lambda: len(self.locks() - before) == 1, "the holder's lock")
            (lock,) = self.locks() - before
            yield holder, lock
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(holder.pid, signal.SIGKILL)  # with borg's child (sleep)
            holder.wait()

    def stale_lock(self) -> str:
        """A lock whose holder was killed (SIGKILL: no chance to remove it)."""
        with self.lock_holder() as (_holder, lock):
            pass
        assert self.locks() == {lock}
        return lock


@pytest.fixture(scope="session")
def template(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty repository per kind: `init` calibrates restic's KDF for seconds."""
    path = tmp_path_factory.mktemp("template") / "repo"
    engine = Engines({kind.partition("-")[0]: _binary(kind) or ""}, cache_dir=path.parent)
    engine.ensure_initialized(_target(kind, path))
    return path


def _target(kind: str, path: Path, password: str = PASSWORD) -> Target:
    engine = kind.partition("-")[0]
    return Target("test", str(path), PasswordSource("password", password), engine=engine)


@pytest.fixture
def kit(kind: str, template: Path, tmp_path: Path) -> Kit:
    """A fresh, empty repository (a copy of the template) and the engines for it."""
    shutil.copytree(template, tmp_path / "repo")
    binary = _binary(kind)
    assert binary is not None
    target = _target(kind, tmp_path / "repo")
    engines = Engines({kind.partition("-")[0]: binary}, cache_dir=tmp_path / "cache")
    return Kit(kind, binary, tmp_path / "repo", tmp_path, target, engines)


source = test_restic_engine.source  # the fixture: the same small tree


# --- initialise, back up, list, restore ------------------------------------------------


def assert_processed(kit: Kit, result: BackupResult, size: int) -> None:
    """The bytes a backup read are the files' size; borg adds its metadata stream's."""
    if kit.borg:
        assert size < result.bytes_processed < size + 4096
    else:
        assert result.bytes_processed == size


@pytest.mark.parametrize("password", [PASSWORD, "p"])  # "p" is in restic's "open config"
def test_ensure_initialized_creates_once(kind: str, tmp_path: Path, password: str) -> None:
    engine = Engines({kind.partition("-")[0]: _binary(kind) or ""}, cache_dir=tmp_path / "c")
    target = _target(kind, tmp_path / "new" / "repo", password)
    assert engine.ensure_initialized(target) is True
    assert (tmp_path / "new" / "repo" / "config").is_file()
    assert engine.ensure_initialized(target) is False
    assert engine.snapshots(target) == []


def test_backup_then_incremental(kit: Kit, source: Path) -> None:
    first = kit.backup("docs", source)
    assert first.snapshot_id is not None
    assert (first.files_new, first.files_changed, first.files_unmodified) == (5, 0, 0)
    size = 6 + 300_000 + 5000 + 10_000
    assert_processed(kit, first, size)
    assert first.bytes_added > 300_000
    assert first.warnings == ()

    (source / "dir" / "sub" / "d.txt").write_bytes(b"y" * 6000)  # changed (new size)
    (source / "new.txt").write_bytes(b"new\n")
    second = kit.backup("docs", source)
    assert second.snapshot_id not in (None, first.snapshot_id)
    counts = (second.files_new, second.files_changed, second.files_unmodified)
    assert sum(counts) == 6
    # borg reads again the file it saw last changed (its files cache keeps only files older
    # than the newest it saw, against timestamp granularity): one more "new" file at most.
    assert counts in ((1, 1, 4), (2, 1, 3), (2, 0, 4)) if kit.borg else counts == (1, 1, 4)
    assert 0 < second.bytes_added < 50_000  # the rest is deduplicated
    assert_processed(kit, second, size + 1000 + 4)


def test_snapshots_of_one_backup_and_host(kit: Kit, source: Path, tmp_path: Path) -> None:
    other = write_tree(tmp_path / "other", {"f": b"other"})
    before = time.time()
    kit.backup("docs", source, host="h1")
    kit.backup("docs", source, other, host="h2")
    kit.backup("pics", other, host="h1")
    kit.backup("docs-old", other, host="h1")  # a name that starts like another

    every = kit.engine.snapshots(kit.target)
    assert [(s.backup, s.host) for s in every] == [
        ("docs", "h1"),
        ("docs", "h2"),
        ("pics", "h1"),
        ("docs-old", "h1"),
    ]
    first = every[0]
    assert first.tags == ("backup-docs",)
    assert first.paths == (str(source),)
    assert sorted(every[1].paths) == sorted([str(source), str(other)])
    assert first.time.tzinfo is not None and before - 5 < first.time.timestamp() < time.time()
    assert first.short_id == first.id[:8] and len(first.id) == 64

    docs = kit.engine.snapshots(kit.target, backup="docs")
    assert [s.host for s in docs] == ["h1", "h2"]
    assert [s.backup for s in kit.engine.snapshots(kit.target, host="h1")] == [
        "docs",
        "pics",
        "docs-old",
    ]
    assert [s.id for s in kit.engine.snapshots(kit.target, "docs", "h2")] == [every[1].id]
    assert kit.engine.snapshots(kit.target, backup="nothing") == []


def test_missing_source_path_is_a_warning(kit: Kit, source: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    result = kit.backup("docs", source, gone)
    assert result.snapshot_id is not None
    assert any(str(gone) in w for w in result.warnings), result.warnings
    assert all("\n" not in w for w in result.warnings)
    (snapshot,) = kit.engine.snapshots(kit.target)
    assert snapshot.paths == (str(source),)


def test_restore_byte_for_byte(kit: Kit, source: Path, tmp_path: Path) -> None:
    snapshot_id = kit.backup("docs", source).snapshot_id
    assert snapshot_id is not None
    progress: list[TransferProgress] = []
    destination = tmp_path / "restore"
    result = kit.engine.restore(kit.target, "latest", str(destination))
    assert digest_tree(restored(destination, source)) == digest_tree(source)
    assert (result.files_restored, result.bytes_restored) == (5, 6 + 300_000 + 5000 + 10_000)
    assert result.target == str(destination)

    again = tmp_path / "by-short-id"
    kit.engine.restore(kit.target, snapshot_id[:8], str(again), on_progress=progress.append)
    assert digest_tree(restored(again, source)) == digest_tree(source)
    assert all(0.0 <= p.fraction <= 1.0 for p in progress)


def test_restore_with_include(kit: Kit, source: Path, tmp_path: Path) -> None:
    snapshot_id = kit.backup("docs", source).snapshot_id
    assert snapshot_id is not None
    destination = tmp_path / "partial"
    include = source / "dir"
    result = kit.engine.restore(kit.target, snapshot_id, str(destination), (str(include),))
    assert digest_tree(restored(destination, include)) == digest_tree(include)
    assert not restored(destination, source / "a.txt").exists()
    assert not restored(destination, source / "other").exists()
    assert (result.files_restored, result.bytes_restored) == (3, 305_000)


def test_includes_mean_the_same_for_every_engine(kit: Kit, tmp_path: Path) -> None:
    """A plain include is that path alone, whatever its name says to borg's pattern parser
    (`re:xfile` is no regular expression); any other is restic's pattern, at any depth."""
    data = write_tree(
        tmp_path / "data",
        {"re:xfile": b"1", "xfile": b"2", "deep/xfile": b"3", "a.html": b"4", "deep/b.html": b"5"},
    )
    request = BackupRequest("docs", (str(data),))
    snapshot_id = kit.engine.backup(kit.target, request).snapshot_id
    assert snapshot_id is not None
    for includes, expected in (
        ((f"{data}/re:xfile",), ["re:xfile"]),
        (("*.html",), ["a.html", "deep/b.html"]),
        ((f"{data}/deep/*",), ["deep/b.html", "deep/xfile"]),
    ):
        destination = tmp_path / f"restore-{len(list(tmp_path.iterdir()))}"
        kit.engine.restore(kit.target, snapshot_id, str(destination), includes)
        assert sorted(digest_tree(restored(destination, data))) == expected


def test_excludes_mean_the_same_for_every_engine(kit: Kit, tmp_path: Path) -> None:
    data = write_tree(
        tmp_path / "data",
        {
            "keep.txt": b"1",
            "x.tmp": b"2",
            "deep/er/y.tmp": b"3",
            "repo/.git/config": b"4",
            "repo/code.py": b"5",
            "cache/tmp/z": b"6",
            "other/tmp/kept": b"7",
        },
    )
    request = BackupRequest(
        "docs", (str(data),), excludes=("*.tmp", ".git", "cache/tmp", f"{data}/other/none")
    )
    snapshot_id = kit.engine.backup(kit.target, request).snapshot_id
    assert snapshot_id is not None
    destination = tmp_path / "restore"
    kit.engine.restore(kit.target, snapshot_id, str(destination))
    assert sorted(digest_tree(restored(destination, data))) == [
        "keep.txt",
        "other/tmp/kept",
        "repo/code.py",
    ]


def test_backup_progress_has_its_total_and_reaches_100(kit: Kit, tmp_path: Path) -> None:
    """Every engine tells a backup's total ahead (restic's scanner; borg's own dry run
    beside it, with the same excludes), so its percent and time left, up to 100 %."""
    data = write_tree(
        tmp_path / "data",
        {"a.txt": b"a" * 1000, "sub/b.txt": b"b" * 2000, "sub/skip.tmp": b"x" * 5000},
    )
    sparse_file(data / "sparse", 2**30)  # long enough to report while it reads
    size = 1000 + 2000 + 2**30
    progress: list[TransferProgress] = []
    request = BackupRequest("docs", (str(data),), excludes=("*.tmp",))
    kit.engine.backup(kit.target, request, on_progress=progress.append)

    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0, fractions
    last = progress[-1]
    assert (last.files_done, last.total_files, last.bytes_done) == (3, 3, size), last
    assert last.total_bytes == size
    assert all(p.total_bytes is None or p.total_bytes <= size for p in progress)
    # while it reads: the whole total, a percent and the time left
    known = [p for p in progress if p.total_bytes == size and 0 < p.fraction < 1]
    assert any(p.seconds_remaining for p in known), progress  # restic omits 0 (whole seconds)


def test_restore_unknown_snapshot(kit: Kit, source: Path, tmp_path: Path) -> None:
    kit.backup("docs", source)
    with pytest.raises(SnapshotNotFound):
        kit.engine.restore(kit.target, "deadbeef", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


# --- retention, prune, check, stats ---------------------------------------------------


def test_retention_keeps_to_one_backup_and_host(kit: Kit, source: Path, tmp_path: Path) -> None:
    extra = write_tree(tmp_path / "extra", {"f": b"1"})

    def backup(name: str, *paths: Path, host: str = "h1") -> str:
        (source / "counter").write_text(str(time.monotonic_ns()))  # never "unchanged"
        result = kit.backup(name, *paths, host=host)
        assert result.snapshot_id is not None
        return result.snapshot_id

    backup("docs", source)
    backup("docs", source)
    backup("docs", source, extra)  # the paths changed: still the same backup
    backup("docs", source, extra)
    backup("pics", source)
    backup("docs", source, host="h2")
    backup("docs-old", source)
    every = kit.engine.snapshots(kit.target)
    docs_h1 = [s.id for s in every if s.backup == "docs" and s.host == "h1"]

    result = kit.engine.forget(kit.target, Retention(keep_last=2), "docs", "h1")
    assert set(result.removed) == set(docs_h1[:2])
    assert set(result.kept) == set(docs_h1[2:])
    left = {s.id for s in kit.engine.snapshots(kit.target)}
    assert left == {s.id for s in every} - set(docs_h1[:2])

    nothing = kit.engine.forget(kit.target, Retention(), "docs", "h1")
    assert nothing.removed == () and set(nothing.kept) == set(docs_h1[2:])

    kit.engine.prune(kit.target)
    assert kit.engine.check(kit.target).ok
    stats = kit.engine.stats(kit.target)
    assert stats.snapshots_count == 5 and stats.total_size > 300_000


def _largest_data_file(path: Path) -> Path:
    return max((path / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)


def test_check_finds_corrupted_data(kit: Kit, source: Path) -> None:
    kit.backup("docs", source)
    assert kit.engine.check(kit.target).ok
    assert kit.engine.check(kit.target, read_data_subset="100%").ok

    data = _largest_data_file(kit.path)
    data.chmod(0o600)
    with data.open("r+b") as file:
        file.seek(data.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))

    result = kit.engine.check(kit.target, read_data_subset="100%")
    assert not result.ok
    assert result.errors and all("\n" not in e for e in result.errors)


# --- secrets --------------------------------------------------------------------------

TRICKY = "p@$$ w0rd \"dq\" 'sq' `tick` \\back; & | * ? ~ # 🐔 = é\ttab\nnewline"


def test_literal_password_with_tricky_characters(kit: Kit, tmp_path: Path) -> None:
    target = replace(
        kit.target,
        location=str(tmp_path / "tricky"),
        password=PasswordSource("password", TRICKY),
    )
    assert kit.engine.ensure_initialized(target)
    data = write_tree(tmp_path / "data", {"f": b"data"})
    kit.engine.backup(target, BackupRequest("docs", (str(data),)))
    # the tool itself, given the very same password in its environment, opens it
    tricky = replace(kit, path=tmp_path / "tricky")
    listed = tricky.bare_list(TRICKY)
    assert listed.returncode == 0, listed.stderr
    assert tricky.bare_list(TRICKY[:-1]).returncode != 0


def test_password_file_and_command(kit: Kit, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD + "\n")
    by_file = replace(kit.target, password=PasswordSource("file", str(secret)))
    by_command = replace(kit.target, password=PasswordSource("command", f"cat {secret}"))
    assert kit.engine.snapshots(by_file) == []
    assert kit.engine.snapshots(by_command) == []
    secret.write_text("not it\n")
    with pytest.raises(WrongPassword):
        kit.engine.snapshots(by_file)


def test_no_secret_in_the_child_command_line(kit: Kit, tmp_path: Path) -> None:
    key = "AWS-SECRET-for-the-integration-test"
    location = str(tmp_path / "repo-with-a-secret-location")
    seen: list[tuple[bytes, bytes]] = []

    def spy(pid: int) -> None:
        proc = Path(f"/proc/{pid}")
        seen.append(((proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()))

    engine = kit.engines(on_spawn=spy)
    target = replace(
        kit.target,
        location=location,
        password=PasswordSource("password", TRICKY),
        env=(("AWS_SECRET_ACCESS_KEY", key),),
    )
    engine.ensure_initialized(target)
    data = write_tree(tmp_path / "src", {"f": b"data"})
    engine.backup(target, BackupRequest("docs", (str(data),), host="h"))
    engine.snapshots(target)
    assert len(seen) >= 4  # look, init, backup, snapshots
    pipe = b"BORG_PASSPHRASE_FD=" if kit.borg else b"RESTIC_PASSWORD_FILE=/dev/fd/"
    for cmdline, environ in seen:
        assert (kit.binary.encode() + b"\0") in cmdline  # borg: python3 /usr/bin/borg ...
        for secret in (TRICKY, location, key):
            assert secret.encode() not in cmdline
        assert TRICKY.encode() not in environ
        assert pipe in environ


# --- failures -------------------------------------------------------------------------


def test_wrong_password(kit: Kit, source: Path) -> None:
    wrong = replace(kit.target, password=PasswordSource("password", "not the password"))
    with pytest.raises(WrongPassword) as caught:
        kit.engine.snapshots(wrong)
    with pytest.raises(WrongPassword):
        kit.engine.backup(wrong, BackupRequest("docs", (str(source),)))
    with pytest.raises(WrongPassword):
        kit.engine.ensure_initialized(wrong)  # never re-initialise on a wrong password
    assert "not the password" not in str(caught.value)
    assert str(kit.path) not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_repository(kit: Kit, source: Path, tmp_path: Path) -> None:
    missing = replace(kit.target, location=str(tmp_path / "nothing-here"))
    with pytest.raises(RepositoryMissing) as caught:
        kit.engine.snapshots(missing)
    with pytest.raises(RepositoryMissing):
        kit.engine.backup(missing, BackupRequest("docs", (str(source),)))
    assert str(tmp_path) not in str(caught.value)
    assert not (tmp_path / "nothing-here").exists()


def test_unreachable_backend(kit: Kit) -> None:
    if kit.borg:
        far = replace(
            kit.target,
            location="ssh://backup@127.0.0.1:1/srv/far",
            env=(("BORG_RSH", "ssh -o BatchMode=yes"),),
        )
    else:
        far = replace(
            kit.target,
            location="sftp:backup@127.0.0.1:/srv/far",
            options=("sftp.command=ssh -p 1 -o BatchMode=yes backup@127.0.0.1 -s sftp",),
        )
    with pytest.raises(BackendUnreachable) as caught:
        kit.engine.snapshots(far)
    assert "/srv/far" not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(BackendUnreachable):
        kit.engine.ensure_initialized(far)  # never init what cannot be reached


def test_live_lock_raises_and_is_never_removed(kit: Kit, source: Path) -> None:
    kit.backup("docs", source)
    with kit.lock_holder() as (holder, lock):
        with pytest.raises(RepositoryLocked) as caught:
            kit.engine.check(kit.target)
        with pytest.raises(RepositoryLocked):
            kit.engine.prune(kit.target)
        assert "\n" not in str(caught.value) and str(kit.path) not in str(caught.value)
        kit.engine.unlock_stale(kit.target)
        assert lock in kit.locks()
        assert holder.poll() is None


@pytest.mark.slow
def test_a_lock_held_past_lock_wait_is_locked_not_a_stall(kit: Kit, source: Path) -> None:
    """The tool's own wait for a lock (restic 0.16+'s --retry-lock, borg's --lock-wait) is
    silent and moves nothing: the stall watch ended it as a stall (is the backend up?)
    after stall_timeout, however long lock_wait was."""
    kit.backup("docs", source)
    engine = kit.engines(lock_wait=6.0, stall_timeout=2.0)
    with kit.lock_holder() as (holder, lock):
        start = time.monotonic()
        with pytest.raises(RepositoryLocked, match="is locked by another process"):
            engine.check(kit.target)
        assert time.monotonic() - start >= 6.0
        assert kit.locks() == {lock} and holder.poll() is None  # none left by the attempts


def test_stale_lock_is_removed_but_not_a_live_one(kit: Kit, source: Path) -> None:
    kit.backup("docs", source)
    stale = kit.stale_lock()
    kit.engine.unlock_stale(kit.target)
    assert stale not in kit.locks()
    assert kit.locks() == set()
    kit.stale_lock()
    assert kit.engine.check(kit.target).ok  # an exclusive lock: the stale one went first
    assert kit.locks() == set()


@pytest.mark.slow
def test_cancel_mid_backup_leaves_the_repository_consistent(kit: Kit, tmp_path: Path) -> None:
    big = sparse_file(tmp_path / "big" / "sparse")
    pids: list[int] = []
    engine = kit.engines(on_spawn=pids.append)
    progress: list[TransferProgress] = []

    def on_progress(report: TransferProgress) -> None:
        if not progress:  # the tool is busy: cancel in a moment, from a signal handler
            signal.setitimer(signal.ITIMER_REAL, 0.3)
        progress.append(report)

    fired: list[float] = []

    def cancel() -> None:
        fired.append(time.monotonic())
        raise JobCancelled("cancelled by the test")

    request = BackupRequest("big", (str(big),), host="h1")
    with on_alarm(cancel), pytest.raises(JobCancelled):
        engine.backup(kit.target, request, on_progress=on_progress)
        pytest.fail("the backup finished before it could be cancelled")
    assert time.monotonic() - fired[0] < 10  # ended by SIGINT, not after the grace
    assert not Path(f"/proc/{pids[-1]}").exists()  # reaped by the engine
    assert readers_of(big) == []  # borg's scan beside it too
    assert kit.locks() == set()
    checked = kit.bare_check()
    assert checked.returncode == 0, checked.stderr
    assert kit.engine.snapshots(kit.target) == []


def readers_of(path: Path) -> list[str]:
    """The command lines of the processes that name `path` in theirs."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.fsencode(path) in (entry / "cmdline").read_bytes():
                found.append((entry / "cmdline").read_bytes().decode(errors="replace"))
    return found


@pytest.mark.timeout(300)
def test_a_borg_archive_noted_ahead_of_the_clock_delays_the_next_a_second_at_most(
    source: Path, tmp_path: Path
) -> None:
    """borg cannot order two archives of one second, so a backup starts in a later second
    than the last one noted; a note ahead of the clock (set back since, or a garbled file)
    holds it one second at most, never until that time comes."""
    assert BORG is not None, "borg is not installed: run `make test` to set it up"
    engines = Engines({"borg": BORG}, cache_dir=tmp_path / "cache")
    target = _target("borg-1.2", tmp_path / "repo")
    engines.ensure_initialized(target)
    request = BackupRequest("docs", (str(source),), host="h1")
    engines.backup(target, request)
    (mark,) = (tmp_path / "cache/borg/henbackup").glob("last-*")
    mark.write_text(f"{int(time.time()) + 86400}\n")  # a day ahead
    started = time.monotonic()
    assert engines.backup(target, request).snapshot_id is not None
    assert time.monotonic() - started < 240  # not a day; generous for a busy machine
    assert len(engines.snapshots(target)) == 2


def test_a_borg_archive_whose_comment_is_no_record_lists_without_paths(
    source: Path, tmp_path: Path
) -> None:
    """Anyone who may write the repository writes archive comments: one nested deeper than
    json can read once raised RecursionError, and the list-snapshots job died with it."""
    assert BORG is not None, "borg is not installed: run `make test` to set it up"
    engines = Engines({"borg": BORG}, cache_dir=tmp_path / "cache")
    target = _target("borg-1.2", tmp_path / "repo")
    engines.ensure_initialized(target)
    engines.backup(target, BackupRequest("docs", (str(source),), host="h1"))
    env = os.environ | {
        "BORG_REPO": str(tmp_path / "repo"),
        "BORG_PASSPHRASE": PASSWORD,
        "BORG_BASE_DIR": str(tmp_path / "borg-bare"),
    }
    comment = "[" * 30_000 + "]" * 30_000
    argv = [BORG, "create", "--comment", comment, "::docs@h1@2020-01-01T00:00:00.0", str(source)]
    subprocess.run(argv, env=env, check=True, capture_output=True)
    listed = engines.snapshots(target, "docs", "h1")
    assert sorted(s.paths for s in listed) == [(), (str(source),)]
