"""The watcher on real inotify in temporary directories: no fakes, no fixed sleeps."""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from inotify_fdinfo import kernel_watched_inodes, kernel_watches

from henbackup.excludes import Excluder
from henbackup.loop import Loop
from henbackup.worker import inotify_hub, watch
from henbackup.worker.debounce import Debouncer, DebounceTimer
from henbackup.worker.watch import _NOT_WATCHED, Watcher, _outermost

ROOT = Path(__file__).resolve().parents[2]


class Harness:
    """A watcher on its own loop, with everything it reported."""

    def __init__(
        self, paths: list[Path], excludes: list[str] = (), retry_after: float = 60.0
    ) -> None:
        self.loop = Loop()
        self.changes = 0
        self.overflows = 0
        self.limits: list[str] = []
        self.watcher = Watcher(
            [str(p) for p in paths],
            Excluder(excludes),
            self.loop,
            self._changed,
            self._overflowed,
            self.limits.append,
            retry_after,
        )
        self.watcher.start()

    def _changed(self, count: int) -> None:
        self.changes += count

    def _overflowed(self) -> None:
        self.overflows += 1

    def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Serve the loop until `until()` or the deadline; returns until()."""
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            guard = self.loop.call_later(0.02, lambda: None)
            self.loop.run_once()
            guard.cancel()
        return until()

    def queued(self) -> int:
        """Bytes of events waiting in the kernel queue (0 when the watcher is off)."""
        if not self.watcher.active:
            return 0
        size = array.array("i", [0])
        fcntl.ioctl(self.watcher.fileno(), termios.FIONREAD, size)
        return size[0]

    def settle(self) -> None:
        """Serve until every event queued so far is handled. The kernel queues an event
        within the syscall that causes it, and the watcher handles what it reads at once:
        an empty queue means nothing is left, no waiting on a clock needed."""
        assert self.pump(lambda: self.queued() == 0)

    def changed_after(self, action: Callable[[], object]) -> bool:
        """Whether `action` is seen as a change."""
        self.settle()
        before = self.changes
        action()
        return self.pump(lambda: self.changes > before)

    def unchanged_after(self, action: Callable[[], object]) -> bool:
        """Whether `action` goes unnoticed."""
        self.settle()
        before = self.changes
        action()
        self.settle()
        return self.changes == before

    def close(self) -> None:
        self.watcher.close()
        self.loop.close()


@pytest.fixture
def watched(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    harnesses: list[Harness] = []

    def make(excludes: list[str] = (), paths: list[Path] | None = None) -> Harness:
        harness = Harness(paths or [root], list(excludes))
        harnesses.append(harness)
        return harness

    yield root, make
    for harness in harnesses:
        harness.close()


def touch(path: Path) -> None:
    path.write_text("x")


@pytest.mark.parametrize("leaf_shortcut", [True, False])
def test_existing_tree_is_watched_at_start(watched, monkeypatch, leaf_shortcut):
    # Without the shortcut: as on btrfs or NFS, every directory is read.
    if not leaf_shortcut:
        monkeypatch.setattr(watch, "_NLINK_FILE_SYSTEMS", set())
    root, make = watched
    (root / "a/b/c").mkdir(parents=True)
    (root / "a/leaf").mkdir()
    (root / "x/y").mkdir(parents=True)
    harness = make()
    assert harness.watcher.watch_count == 7
    assert harness.changed_after(lambda: touch(root / "a/b/c/f"))
    assert harness.changed_after(lambda: (root / "a/leaf/new").mkdir())
    assert harness.pump(lambda: harness.watcher.watch_count == 8)


def test_nested_creation_is_followed_even_before_watches_exist(watched):
    root, make = watched
    harness = make()
    deep = root / "a/b/c/d"

    def create():
        deep.mkdir(parents=True)
        touch(deep / "early")  # created before the watch of d can exist

    assert harness.changed_after(create)
    assert harness.pump(lambda: harness.watcher.watch_count == 5)
    assert harness.changed_after(lambda: touch(deep / "later"))
    assert harness.changed_after(lambda: touch(deep / "early"))


def test_files_changes_and_deletes_are_changes(watched):
    root, make = watched
    (root / "d").mkdir()
    touch(root / "d/f")
    harness = make()
    assert harness.changed_after(lambda: (root / "d/f").write_text("more"))
    assert harness.changed_after(lambda: os.chmod(root / "d/f", 0o600))
    assert harness.changed_after(lambda: (root / "d/f").unlink())
    assert harness.changed_after(lambda: (root / "d").rmdir())
    assert harness.pump(lambda: harness.watcher.watch_count == 1)


def test_deleting_a_subtree_drops_its_watches(watched):
    root, make = watched
    (root / "a/b/c").mkdir(parents=True)
    harness = make()
    assert harness.changed_after(lambda: shutil.rmtree(root / "a"))
    assert harness.pump(lambda: harness.watcher.watch_count == 1)


def test_a_tree_moved_in_is_watched(watched, tmp_path):
    root, make = watched
    outside = tmp_path / "outside"
    (outside / "x/y").mkdir(parents=True)
    harness = make()
    assert harness.changed_after(lambda: (outside).rename(root / "moved"))
    assert harness.pump(lambda: harness.watcher.watch_count == 4)
    assert harness.changed_after(lambda: touch(root / "moved/x/y/f"))


def test_a_tree_moved_out_is_forgotten(watched, tmp_path):
    root, make = watched
    (root / "a/b/c").mkdir(parents=True)
    harness = make()
    assert harness.changed_after(lambda: (root / "a").rename(tmp_path / "gone"))
    assert harness.pump(lambda: harness.watcher.watch_count == 1)
    assert harness.unchanged_after(lambda: touch(tmp_path / "gone/b/c/f"))


def test_a_rename_inside_the_tree_keeps_watching_under_the_new_name(watched):
    root, make = watched
    (root / "a/b").mkdir(parents=True)
    (root / "other").mkdir()
    harness = make(["*.tmp"])
    assert harness.changed_after(lambda: (root / "a").rename(root / "other/renamed"))
    assert harness.changed_after(lambda: touch(root / "other/renamed/b/f"))
    assert harness.watcher.watch_count == 4
    # renamed to an excluded name: its subtree is no longer watched
    # (leaving the backup is a change)
    assert harness.changed_after(lambda: (root / "other/renamed").rename(root / "x.tmp"))
    assert harness.pump(lambda: harness.watcher.watch_count == 2)
    assert harness.unchanged_after(lambda: touch(root / "x.tmp/b/f2"))


def test_excluded_names_are_neither_watched_nor_changes(watched):
    root, make = watched
    (root / "src/.git/objects").mkdir(parents=True)
    harness = make([".git", "*.tmp", "cache/"])
    assert harness.watcher.watch_count == 2  # root and src
    assert harness.unchanged_after(lambda: touch(root / "src/.git/objects/x"))
    assert harness.unchanged_after(lambda: touch(root / "src/a.tmp"))
    assert harness.unchanged_after(lambda: (root / "cache").mkdir())
    assert harness.unchanged_after(lambda: touch(root / "cache/blob"))
    assert harness.changed_after(lambda: touch(root / "src/a.txt"))
    assert harness.watcher.watch_count == 2


def test_path_patterns_follow_renames(watched):
    root, make = watched
    (root / "a/b/deep").mkdir(parents=True)
    harness = make(["a/b", f"{root}/top/*"])
    assert harness.watcher.watch_count == 2  # root, a
    assert harness.unchanged_after(lambda: touch(root / "a/b/deep/f"))
    # a renamed to c: c/b is no longer excluded by "a/b" and gets watched
    assert harness.changed_after(lambda: (root / "a").rename(root / "c"))
    assert harness.pump(lambda: harness.watcher.watch_count == 4)
    assert harness.changed_after(lambda: touch(root / "c/b/deep/f"))
    # moved under top/: excluded by the anchored pattern
    assert harness.changed_after(lambda: (root / "top").mkdir())
    assert harness.changed_after(lambda: (root / "c").rename(root / "top/c"))
    assert harness.pump(lambda: harness.watcher.watch_count == 2)


def test_a_root_removed_and_recreated_is_watched_again(watched):
    root, make = watched
    (root / "a").mkdir()
    harness = make()
    assert harness.changed_after(lambda: shutil.rmtree(root))
    assert harness.pump(lambda: harness.watcher.watch_count == 0)
    assert harness.changed_after(lambda: (root / "b").mkdir(parents=True))
    assert harness.pump(lambda: harness.watcher.watch_count == 2)
    assert harness.changed_after(lambda: touch(root / "b/f"))


def test_a_root_whose_parents_vanish_comes_back(tmp_path, watched):
    _, make = watched
    root = tmp_path / "p1/p2/root"
    root.mkdir(parents=True)
    harness = make(paths=[root])
    assert harness.changed_after(lambda: shutil.rmtree(tmp_path / "p1"))
    assert harness.pump(lambda: harness.watcher.watch_count == 0)
    assert harness.unchanged_after(lambda: (tmp_path / "p1/p2").mkdir(parents=True))
    assert harness.changed_after(lambda: root.mkdir())
    assert harness.changed_after(lambda: touch(root / "f"))


def test_a_root_missing_at_start_is_watched_once_created(tmp_path, watched):
    _, make = watched
    root = tmp_path / "later/root"
    harness = make(paths=[root])
    assert harness.watcher.watch_count == 0
    assert harness.changed_after(lambda: root.mkdir(parents=True))
    assert harness.changed_after(lambda: touch(root / "f"))


def test_a_root_moved_away_and_replaced(watched, tmp_path):
    root, make = watched
    harness = make()
    assert harness.changed_after(lambda: root.rename(tmp_path / "old"))
    assert harness.unchanged_after(lambda: touch(tmp_path / "old/f"))
    replacement = tmp_path / "new"
    (replacement / "sub").mkdir(parents=True)
    assert harness.changed_after(lambda: replacement.rename(root))
    assert harness.changed_after(lambda: touch(root / "sub/f"))


def test_a_file_path_is_watched_and_survives_atomic_replacement(tmp_path, watched):
    _, make = watched
    target = tmp_path / "config.ini"
    touch(target)
    harness = make(paths=[target])
    assert harness.changed_after(lambda: target.write_text("new"))
    temporary = tmp_path / "config.ini.new"
    touch(temporary)
    assert harness.changed_after(lambda: temporary.replace(target))
    assert harness.changed_after(lambda: target.write_text("newer"))
    assert harness.unchanged_after(lambda: touch(tmp_path / "sibling"))


def test_undecodable_names_are_watched(watched):
    root, make = watched
    harness = make(["*.tmp"])
    odd = os.path.join(os.fsencode(root), b"\xff\xfe-dir")
    assert harness.changed_after(lambda: os.mkdir(odd))
    assert harness.pump(lambda: harness.watcher.watch_count == 2)
    assert harness.changed_after(lambda: open(os.path.join(odd, b"f\xff"), "w").close())
    assert harness.unchanged_after(lambda: open(os.path.join(odd, b"\xff.tmp"), "w").close())


def test_overlapping_paths_are_watched_once(tmp_path):
    assert _outermost(["/a/b", "/a", "/a/../a/c", "/ab", "/a/"]) == ["/a", "/ab"]


def test_an_overflow_is_reported_and_nothing_is_lost(watched):
    # max_queued_events is global (not per namespace): overflow it by a burst that the
    # loop does not read until it is over.
    root, make = watched
    burst = root / "burst"
    burst.mkdir()
    harness = make()
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    assert limit <= 1 << 20, "a burst this large would take too long"
    for i in range(limit + 100):
        os.close(os.open(burst / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    (burst / "late/deeper").mkdir(parents=True)  # its creation event is lost
    assert harness.pump(lambda: harness.overflows >= 1)
    assert harness.pump(lambda: harness.watcher.watch_count == 4)  # found by the rescan
    assert harness.changed_after(lambda: touch(burst / "late/deeper/f"))


def test_a_removal_lost_in_an_overflow_is_cleaned_up(watched):
    root, make = watched
    (root / "doomed/sub").mkdir(parents=True)
    harness = make()
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for i in range(limit + 100):
        os.close(os.open(root / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    shutil.rmtree(root / "doomed")
    assert harness.pump(lambda: harness.overflows >= 1)
    assert harness.pump(lambda: harness.watcher.watch_count == 1)


def debounced(harness: Harness, wait_min: float, wait_max: float) -> list[tuple[float, str]]:
    """Wire the harness's watcher to a DebounceTimer; returns where triggers are recorded."""
    fired: list[tuple[float, str]] = []
    timer = DebounceTimer(
        harness.loop,
        Debouncer(wait_min, wait_max),
        lambda reason: fired.append((time.monotonic(), reason)),
    )
    harness.watcher.on_change = timer.changed
    harness.watcher.on_overflow = timer.overflowed
    return fired


def test_a_change_triggers_after_wait_min(watched):
    root, make = watched
    harness = make()
    fired = debounced(harness, wait_min=0.3, wait_max=5.0)
    touched = time.monotonic()
    for i in range(5):
        touch(root / f"f{i}")
    assert harness.pump(lambda: fired, timeout=3.0)
    late = fired[0][0] - (touched + 0.3)
    assert 0 <= late < 0.1, late
    assert fired[0][1] == "10 changes"  # each file: IN_CREATE and IN_MODIFY
    harness.pump(lambda: len(fired) > 1, timeout=0.5)
    assert len(fired) == 1


def test_continuous_changes_trigger_at_wait_max(watched):
    root, make = watched
    harness = make()
    fired = debounced(harness, wait_min=0.3, wait_max=1.0)
    first = time.monotonic()

    def keep_changing() -> None:  # every 0.1 s, never quiet for wait_min
        touch(root / "busy")
        if not fired:
            harness.loop.call_later(0.1, keep_changing)

    keep_changing()
    assert harness.pump(lambda: fired, timeout=3.0)
    assert 1.0 <= fired[0][0] - first < 1.1


LIMIT_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])
from henbackup.loop import Loop
from henbackup.excludes import Excluder
from henbackup.worker.watch import Watcher
root, report, loop = sys.argv[1], {"changes": 0, "limits": []}, Loop()
def changed(n): report["changes"] += n
watcher = Watcher([root], Excluder(), loop, changed, lambda: None, report["limits"].append)
watcher.start()
report["after_start"] = [watcher.active, watcher.watch_count]
if watcher.active:  # under the limit at start: cross it with new directories
    os.makedirs(os.path.join(root, *[f"n{i}" for i in range(30)]))
    while watcher.active:
        guard = loop.call_later(0.05, lambda: None); loop.run_once(); guard.cancel()
report["after"] = [watcher.active, watcher.watch_count]
print(json.dumps(report))
"""


UNSHARE = ("unshare", "--user", "--map-root-user")


def run_with_watch_limit(root: Path, limit: int) -> dict:
    """Run LIMIT_SCRIPT in a private user namespace whose inotify watch limit is `limit`
    (user.max_inotify_watches is per user namespace: nothing outside is affected)."""
    shell = f'echo {limit} > /proc/sys/user/max_inotify_watches && exec "$0" "$@"'
    done = subprocess.run(
        [*UNSHARE, "sh", "-c", shell, sys.executable, "-c", LIMIT_SCRIPT, str(root), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("when", ["at start", "while running"])
def test_running_out_of_watches_is_reported_and_nothing_crashes(tmp_path, when):
    root = tmp_path / "root"
    if when == "at start":
        for i in range(40):
            (root / f"d{i}").mkdir(parents=True)
    else:
        root.mkdir()
    report = run_with_watch_limit(root, 20)
    assert report["after"] == [False, 0]
    assert report["after_start"][0] is (when != "at start")
    [message] = report["limits"]
    assert "fs.inotify.max_user_watches" in message
    assert "sysctl fs.inotify.max_user_watches=" in message
    assert when == "at start" or report["changes"] >= 1


def test_churn_leaves_nothing_behind(watched):
    # The kernel never reuses a watch descriptor soon: the tables are keyed by it, so they
    # hold the live watches only, however many directories came and went.
    root, make = watched
    (root / "stays").mkdir()
    harness = make()
    for i in range(40):
        (root / f"tmp{i}").mkdir()
        assert harness.pump(lambda: harness.watcher.watch_count == 3)
        (root / f"tmp{i}").rmdir()
        assert harness.pump(lambda: harness.watcher.watch_count == 2)
    watcher = harness.watcher
    assert kernel_watches(watcher.fileno()) == watcher._node.keys() | watcher._anchors.keys()
    assert len(watcher._node) == 2
    assert harness.changed_after(lambda: touch(root / "stays/f"))


def watched_as_recorded(harness: Harness, root: Path) -> dict[bytes, bool]:
    """Each recorded path of the watcher: whether its kernel watch is that very directory."""
    watcher = harness.watcher
    inodes = kernel_watched_inodes(watcher.fileno())
    recorded = {watcher._dir_path(wd): inodes.get(wd) for wd in watcher._node}
    return {path: os.lstat(path).st_ino == ino for path, ino in recorded.items()}


def directories(root: Path) -> set[bytes]:
    return {os.fsencode(top) for top, _, _ in os.walk(root)}


def read_in_two(harness: Harness, cut_after: bytes) -> None:
    """Handle the queued events in two reads, the first ending at the event named `cut_after`
    (a boundary the kernel may choose)."""
    watcher, hub = harness.watcher, harness.watcher.hub
    events = hub._dispatch(hub._inotify.read(1 << 18))[watcher]
    cut = next(i for i, (_, _, name) in enumerate(events) if name == cut_after) + 1
    watcher.handle(events[:cut])
    watcher.handle(events[cut:])
    harness.settle()


@pytest.mark.timeout(10)
def test_a_stale_move_below_its_own_descendant_is_swept_and_watched_again(watched):
    # A is moved away, a new A/B made and the old A moved to A/B/N; the first read ends at
    # the earlier IN_MOVED_TO of N in the old A/B, which now finds the old A there and
    # records it below its own child B: a cycle, met by the sweep X's move asks for.
    root, make = watched
    (root / "A/B").mkdir(parents=True)
    (root / "X").mkdir()
    harness = make()
    (root / "X").rename(root / "Y")  # moved, then gone: a sweep of the first read
    (root / "Y").rmdir()
    (root / "C").mkdir()
    (root / "C").rename(root / "A/B/N")
    (root / "A").rename(root / "Z")
    (root / "A/B").mkdir(parents=True)
    (root / "Z").rename(root / "A/B/N")
    read_in_two(harness, cut_after=b"N")
    assert watched_as_recorded(harness, root) == dict.fromkeys(directories(root), True)
    assert len(directories(root)) == 6
    assert harness.changed_after(lambda: touch(root / "A/B/N/B/N/f"))


@pytest.mark.timeout(30)
def test_a_directory_made_as_its_parent_is_renamed_is_watched(watched):
    # A/etc is made, then A renamed before the event is read: the event names A/etc, which
    # is no more; the rename, later in the same read, says where it went.
    root, make = watched
    (root / "A").mkdir()
    harness = make()
    (root / "A/etc/deep").mkdir(parents=True)
    (root / "A").rename(root / "A2")
    harness.settle()
    assert watched_as_recorded(harness, root) == dict.fromkeys(directories(root), True)
    assert harness.changed_after(lambda: touch(root / "A2/etc/deep/f"))


@pytest.mark.timeout(30)
def test_a_link_put_in_place_of_a_directory_is_not_followed(watched, tmp_path):
    # A directory is made in A, then A renamed and a link to elsewhere put in its place
    # before the event is read: the new directory's recorded path leads through the link.
    root, make = watched
    outside = tmp_path / "outside"
    (outside / "etc/deep").mkdir(parents=True)
    (root / "A").mkdir()
    harness = make()
    (root / "A/etc").mkdir()
    (root / "A").rename(root / "A2")
    (root / "A").symlink_to(outside)
    harness.settle()
    inodes = kernel_watched_inodes(harness.watcher.fileno()).values()
    assert not {os.lstat(d).st_ino for d, _, _ in os.walk(outside)} & set(inodes)
    assert watched_as_recorded(harness, root) == dict.fromkeys(directories(root), True)
    assert harness.unchanged_after(lambda: touch(outside / "etc/deep/f"))
    assert harness.changed_after(lambda: touch(root / "A2/etc/f"))


@pytest.mark.timeout(30)
def test_an_instance_the_system_cannot_open_is_tried_again(tmp_path, monkeypatch):
    # ENFILE (the system's file table), then ENOMEM at the retry: said once, and watched
    # at the attempt after.
    real, failures = inotify_hub.Inotify, [errno.ENOMEM, errno.ENFILE]

    def inotify():
        if failures:
            code = failures.pop()
            raise OSError(code, os.strerror(code))
        return real()

    monkeypatch.setattr(inotify_hub, "Inotify", inotify)
    harness = Harness([tmp_path], retry_after=0.05)
    assert not harness.watcher.active
    said = "cannot open inotify (Too many open files in system): " + _NOT_WATCHED
    assert harness.limits == [said]
    assert harness.overflows == 0
    assert harness.pump(lambda: harness.watcher.active)
    # What changed while nothing was watched is unknown: as for lost events, it runs once
    # (before, those changes waited for the next one, maybe for ever without a schedule).
    assert harness.overflows == 1
    assert harness.changed_after(lambda: touch(tmp_path / "f"))
    assert not failures and harness.limits == [said]
    assert harness.overflows == 1
    harness.close()


RETRY_SCRIPT = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
from henbackup.linux import Inotify
from henbackup.loop import Loop
from henbackup.excludes import Excluder
from henbackup.worker.watch import Watcher
root, report, loop = sys.argv[1], {"changes": 0, "limits": []}, Loop()
held = []  # every instance the namespace allows: the watcher's start meets EMFILE
while True:
    try:
        held.append(Inotify())
    except OSError:
        break
def changed(n): report["changes"] += n
watcher = Watcher([root], Excluder(), loop, changed, lambda: None, report["limits"].append,
                  retry_after=0.2)
watcher.start()
report["after_start"] = watcher.active
def turn():
    guard = loop.call_later(0.05, lambda: None); loop.run_once(); guard.cancel()
for _ in range(10):  # a few failed attempts: said once
    turn()
held.pop().close()  # one instance comes free
deadline = time.monotonic() + 30
while not watcher.active and time.monotonic() < deadline:
    turn()
report["retried"] = watcher.active
open(os.path.join(root, "new"), "w").close()
while report["changes"] == 0 and time.monotonic() < deadline:
    turn()
print(json.dumps(report))
"""


def test_a_watch_that_met_the_instance_limit_is_tried_again_and_said_once(tmp_path):
    # fs.inotify.max_user_instances (here user.max_inotify_instances of a private user
    # namespace, so nothing outside is affected) is full when the watch starts: it says so
    # once, tries again, and watches as soon as an instance comes free.
    root = tmp_path / "root"
    root.mkdir()
    shell = 'echo 4 > /proc/sys/user/max_inotify_instances && exec "$0" "$@"'
    done = subprocess.run(
        [*UNSHARE, "sh", "-c", shell, sys.executable, "-c", RETRY_SCRIPT, str(root), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["after_start"] is False
    [message] = report["limits"]
    assert "fs.inotify.max_user_instances" in message and "tried again" in message
    assert report["retried"] is True
    assert report["changes"] >= 1


def mount_tmpfs(at: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(at)], check=True)


def unmount(at: Path) -> None:
    subprocess.run(["umount", "--lazy", str(at)], check=True)


def test_a_path_on_a_file_system_mounted_after_the_start_is_watched_from_the_next_look(
    tmp_path,
):
    """inotify sees no mount: a NAS mounted after the daemon started (boot order), or
    unmounted and mounted again, was never watched until a restart. Each `retry_after`,
    a path now on another file system is set up again, and runs its backup once."""
    nas = tmp_path / "nas"
    nas.mkdir()
    harness = Harness([nas / "photos", tmp_path / "local"], retry_after=0.2)
    (tmp_path / "local").mkdir()
    try:
        mount_tmpfs(nas)
        try:
            (nas / "photos" / "2026").mkdir(parents=True)
            assert harness.pump(lambda: harness.overflows == 1)
            assert harness.changed_after(lambda: touch(nas / "photos" / "2026" / "img.jpg"))
        finally:
            unmount(nas)
        harness.settle()  # gone with the NAS: no run (it would back up the empty mount point)
        mount_tmpfs(nas)  # the same NAS, mounted again
        try:
            (nas / "photos").mkdir()
            assert harness.pump(lambda: harness.overflows == 2)
            assert harness.changed_after(lambda: touch(nas / "photos" / "again.jpg"))
        finally:
            unmount(nas)
        assert not harness.pump(lambda: harness.overflows > 2, timeout=1.0)  # 5 looks: still
        assert harness.changed_after(lambda: touch(tmp_path / "local" / "f"))
    finally:
        harness.close()


BECOMES_READABLE = """
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_watch import Harness
root = Path(sys.argv[1])
harness = Harness([root])
os.chmod(root / "locked", 0o755)
harness.pump(lambda: False, 0.3)
harness.changes = 0
(root / "locked" / "in" / "file").write_text("x")
print(harness.pump(lambda: harness.changes > 0), harness.watcher.watch_count)
"""


def test_a_directory_that_becomes_readable_is_watched_from_then_on(tmp_path):
    """Run as root without DAC override, as NFS (root_squash), CIFS or FUSE treat root: a
    directory it could not read at the start was never watched, even once readable."""
    (tmp_path / "locked" / "in").mkdir(parents=True)
    os.chmod(tmp_path / "locked", 0)
    without_dac = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    done = subprocess.run(
        [
            *without_dac,
            sys.executable,
            "-c",
            BECOMES_READABLE,
            str(tmp_path),
            str(Path(__file__).parent),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["True", "3"], done.stderr
