"""The watcher (henbackup/worker/watching.py): every backup's watch on one inotify instance,
on real inotify in temporary directories, its news read from a real channel."""

from __future__ import annotations

import array
import fcntl
import json
import os
import select
import subprocess
import sys
import termios
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from inotify_fdinfo import kernel_watches

from henbackup.channel import Channel, Watch, WatchNews
from henbackup.loop import Loop
from henbackup.worker.watching import Watching

ROOT = Path(__file__).resolve().parents[2]
UNSHARE = ("unshare", "--user", "--map-root-user")


def inotify_instances() -> int:
    """The inotify instances this process holds."""
    fds = os.listdir("/proc/self/fd")
    return sum(_readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify" for fd in fds)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


class Harness:
    """A Watching on its own loop, and the news it sent, per backup."""

    def __init__(self, own: tuple[str, ...] = ()) -> None:
        self.loop = Loop()
        self.master, child = Channel.pair()
        self.watching = Watching(self.loop, child, own=own)
        self.changes: Counter[str] = Counter()
        self.overflows: Counter[str] = Counter()
        self.loop.add_reader(self.master.fileno(), self._heard)

    def _heard(self) -> None:
        for news in self.master.receive(pytest.fail) or []:
            assert isinstance(news, WatchNews), news
            assert news.limit is None, news.limit
            self.changes[news.backup] += news.changes
            self.overflows[news.backup] += news.overflow

    def pump(self, until: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            guard = self.loop.call_later(0.02, lambda: None)
            self.loop.run_once()
            guard.cancel()
        return until()

    def settle(self) -> None:
        """Serve until every event queued so far is handled and its news heard: the kernel
        queues an event within the syscall that causes it, the watcher sends its news as
        it reads it (as test_watch.py's settle, no waiting on a clock)."""
        hub = self.watching.hub

        def queued() -> int:
            if hub.fileno() < 0:
                return 0
            size = array.array("i", [0])
            fcntl.ioctl(hub.fileno(), termios.FIONREAD, size)
            return size[0]

        assert self.pump(lambda: queued() == 0)
        while select.select([self.master], [], [], 0)[0]:
            self._heard()

    def seen_by(self, action: Callable[[], object]) -> set[str]:
        """The backups that see `action` as a change."""
        self.settle()
        before = self.changes.copy()
        action()
        self.settle()
        return {name for name in self.changes if self.changes[name] > before[name]}

    def close(self) -> None:
        for name in list(self.watching.watchers):
            self.watching.unwatch(name)
        self.loop.close()


@pytest.fixture
def harness():
    made = Harness()
    yield made
    made.close()


def touch(path: Path) -> None:
    path.write_text("x")


def test_overlapping_trees_share_one_instance_and_each_backup_hears_its_own(harness, tmp_path):
    root = tmp_path / "root"
    (root / "sub/cache").mkdir(parents=True)
    (root / "cache").mkdir()
    (tmp_path / "other").mkdir()
    before = inotify_instances()
    # a: the whole tree; b: a subtree of it, without its caches; c: elsewhere
    harness.watching.watch(Watch("a", (str(root),)))
    harness.watching.watch(Watch("b", (str(root / "sub"),), ("cache",)))
    harness.watching.watch(Watch("c", (str(tmp_path / "other"),)))
    assert inotify_instances() == before + 1
    assert harness.seen_by(lambda: touch(root / "sub/f")) == {"a", "b"}
    assert harness.seen_by(lambda: touch(root / "f")) == {"a"}
    assert harness.seen_by(lambda: touch(root / "sub/cache/f")) == {"a"}  # b excludes it
    assert harness.seen_by(lambda: touch(root / "cache/f")) == {"a"}
    assert harness.seen_by(lambda: touch(tmp_path / "other/f")) == {"c"}
    # a new directory in the shared part is followed for both
    (root / "sub/new").mkdir()
    assert harness.seen_by(lambda: touch(root / "sub/new/f")) == {"a", "b"}


def test_what_henbackup_writes_itself_is_no_change(tmp_path):
    """A backup of /var holds henbackup's run records and restic's cache, written at each
    run: seen as changes, the backup ran again after each run, for ever."""
    var = tmp_path / "var"
    state, cache = var / "lib" / "hen[backup]", var / "cache" / "henbackup"
    state.mkdir(parents=True)
    cache.mkdir(parents=True)
    (var / "log").mkdir()
    harness = Harness(own=(str(state), str(cache)))
    try:
        harness.watching.watch(Watch("var", (str(var),)))
        assert harness.seen_by(lambda: touch(state / "record.json")) == set()
        assert harness.seen_by(lambda: (cache / "data").mkdir()) == set()
        assert harness.seen_by(lambda: touch(cache / "data" / "pack")) == set()
        assert harness.seen_by(lambda: touch(var / "log" / "syslog")) == {"var"}
        assert harness.seen_by(lambda: touch(var / "lib" / "other")) == {"var"}
    finally:
        harness.close()


def test_a_backup_unwatched_leaves_the_watches_it_shared(harness, tmp_path):
    root = tmp_path / "root"
    (root / "sub/deep").mkdir(parents=True)
    harness.watching.watch(Watch("a", (str(root),)))
    harness.watching.watch(Watch("b", (str(root / "sub"),)))
    harness.watching.unwatch("a")
    assert harness.seen_by(lambda: touch(root / "sub/deep/f")) == {"b"}
    assert harness.seen_by(lambda: touch(root / "f")) == set()
    # watched anew, with an exclude now: what it excludes is no change of its any more
    harness.watching.watch(Watch("b", (str(root / "sub"),), ("deep",)))
    assert harness.seen_by(lambda: touch(root / "sub/deep/g")) == set()
    assert harness.seen_by(lambda: touch(root / "sub/g")) == {"b"}


def test_the_kernel_keeps_a_shared_watch_until_its_last_holder_leaves(harness, tmp_path):
    # The hub keeps no entry for the wds its first backup (its default) holds alone: the
    # kernel's own list says what is watched as backups come and go, in either order.
    root = tmp_path / "root"
    (root / "sub/deep").mkdir(parents=True)
    (tmp_path / "x/other").mkdir(parents=True)
    watching = harness.watching

    def kernel() -> int:
        return len(kernel_watches(watching.hub.fileno()))

    # a: tmp_path (its anchor), root, sub, deep; b: root (anchor), sub, deep; c: x, other
    watching.watch(Watch("a", (str(root),)))
    watching.watch(Watch("b", (str(root / "sub"),)))
    watching.watch(Watch("c", (str(tmp_path / "x/other"),)))
    assert kernel() == 6
    watching.unwatch("b")  # what b shared is a's alone again, still watched
    assert kernel() == 6
    assert harness.seen_by(lambda: touch(root / "sub/deep/f")) == {"a"}
    watching.watch(Watch("b", (str(root / "sub"),)))
    watching.unwatch("a")  # the default leaves: only its anchor goes
    assert kernel() == 5
    assert harness.seen_by(lambda: touch(root / "sub/deep/f")) == {"b"}
    assert harness.seen_by(lambda: touch(root / "f")) == set()
    watching.watch(Watch("a", (str(root),)))  # the hub's default again
    assert kernel() == 6
    watching.unwatch("b")
    assert kernel() == 6
    assert harness.seen_by(lambda: touch(root / "sub/deep/f")) == {"a"}
    watching.unwatch("c")
    assert kernel() == 4
    assert harness.seen_by(lambda: touch(root / "sub/deep/f")) == {"a"}
    assert harness.seen_by(lambda: touch(tmp_path / "x/other/f")) == set()


def test_an_overflow_reaches_every_backup_and_each_rescans(harness, tmp_path):
    # max_queued_events is global (not per namespace): overflow it by a burst that the
    # loop does not read until it is over.
    root = tmp_path / "root"
    burst = root / "sub/burst"
    burst.mkdir(parents=True)
    (tmp_path / "other").mkdir()
    harness.watching.watch(Watch("a", (str(root),)))
    harness.watching.watch(Watch("b", (str(root / "sub"),), ("skipped",)))
    harness.watching.watch(Watch("c", (str(tmp_path / "other"),)))
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    assert limit <= 1 << 20, "a burst this large would take too long"
    for i in range(limit + 100):
        os.close(os.open(burst / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    (burst / "late/deeper").mkdir(parents=True)  # its creation event is lost
    (burst / "skipped").mkdir()
    assert harness.pump(lambda: all(harness.overflows[n] >= 1 for n in "abc"))
    # the rescans found what the lost events would have said, each with its own excludes
    assert harness.seen_by(lambda: touch(burst / "late/deeper/f")) == {"a", "b"}
    assert harness.seen_by(lambda: touch(burst / "skipped/f")) == {"a"}
    assert harness.seen_by(lambda: touch(tmp_path / "other/f")) == {"c"}


# A private user namespace whose inotify watch limit is low (user.max_inotify_watches is per
# namespace: nothing outside is affected). The big tree does not fit: its backup says so and
# tries again; the small one, on the same instance, keeps watching. Once the big tree fits,
# the next attempt watches it.
LIMIT_SCRIPT = r"""
import json, shutil, sys, time
sys.path.insert(0, sys.argv[2])
from henbackup.channel import Channel
from henbackup.loop import Loop
from henbackup.channel import Watch
from henbackup.worker.watching import Watching
root, loop = sys.argv[1], Loop()
master, child = Channel.pair()
watching = Watching(loop, child, retry_after=0.2)
news = []
loop.add_reader(master.fileno(), lambda: news.extend(master.receive(print) or []))
def turn():
    guard = loop.call_later(0.05, lambda: None); loop.run_once(); guard.cancel()
def until(condition):
    deadline = time.monotonic() + 30
    while not condition() and time.monotonic() < deadline:
        turn()
    return condition()
def heard(name, what):
    return [n for n in news if n.backup == name and getattr(n, what)]
watching.watch(Watch("small", (root + "/small",)))
watching.watch(Watch("big", (root + "/big",)))
big, small = watching.watchers["big"], watching.watchers["small"]
report = {"started": [small.active, big.active]}
open(root + "/small/f", "w").close()
report["small_heard"] = until(lambda: bool(heard("small", "changes")))
for i in range(25):
    shutil.rmtree(f"{root}/big/d{i}")
report["retried"] = until(lambda: big.active)
open(root + "/big/d29/f", "w").close()
report["big_heard"] = until(lambda: bool(heard("big", "changes")))
report["limits"] = [(n.backup, n.limit) for n in news if n.limit]
print(json.dumps(report))
"""


def test_a_backup_over_the_watch_limit_is_retried_and_the_others_keep_watching(tmp_path):
    root = tmp_path / "root"
    for i in range(3):
        (root / f"small/d{i}").mkdir(parents=True)
    for i in range(30):
        (root / f"big/d{i}").mkdir(parents=True)
    shell = 'echo 20 > /proc/sys/user/max_inotify_watches && exec "$0" "$@"'
    done = subprocess.run(
        [*UNSHARE, "sh", "-c", shell, sys.executable, "-c", LIMIT_SCRIPT, str(root), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["started"] == [True, False]
    assert report["small_heard"] is True
    [(backup, message)] = report["limits"]
    assert backup == "big" and "fs.inotify.max_user_watches" in message
    assert report["retried"] is True
    assert report["big_heard"] is True
