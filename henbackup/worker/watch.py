"""A recursive inotify watch of a backup's paths, served by a selector loop.

Every directory under each path is watched, except those restic's --exclude skips (the same
`Excluder`); new directories are followed, a directory created with content already in it is
scanned. Changes are counted per read and handed to `on_change(count)`. The kernel dropping
events (IN_Q_OVERFLOW) calls `on_overflow()` and rescans the tree, so no directory stays
unwatched. Running out of watches (fs.inotify.max_user_watches) or inotify instances
(EMFILE: fs.inotify.max_user_instances, or this process's descriptors) releases every watch
and calls `on_watch_limit(message)` with how to raise the limit, once: the watcher tries
again every `retry_after` seconds, and says so again only after a start that worked. A path
that disappears is waited for from its nearest existing parent and watched again when it
comes back.

Watchers share one inotify instance when given the same `InotifyHub` (inotify_hub.py):
the watcher process (watching.py) watches every backup of the daemon through one. A
directory two backups watch then has one watch descriptor, held by both.

Why not pyinotify's WatchManager and Notifier: measured by bench/bench_watch.py, they cost
~400 bytes and ~22 µs per watch and ~30 µs per event, far above the issue's budget (150
bytes per watch, 2 s of CPU per 100k-file storm), and raise on names that are not UTF-8.
This module talks to the same three libc calls (inotify_init1, inotify_add_watch,
inotify_rm_watch, wrapped by `henbackup.linux.Inotify`) as pyinotify does: a watched
directory costs its parent's watch descriptor and its own name (one bytes object in a table
keyed by watch descriptor: ~130 bytes in all at 100,000 directories), ~8 µs to set up
(leaf directories are not read: see `_subdirectories`), and an event ~2 µs (reads are
batched: see InotifyHub._pause).

inotify sees no mounts: every `retry_after` seconds, a configured path now on another file
system than the one watched (a NAS mounted after the start, or again) is set up anew, and
reported as lost events (its content is unknown). An unmount is no change: a backup then
would save the empty mount point.

Not followed: a rename of an ancestor of a configured path (the watches follow the inodes,
the paths reported then are the old ones), a file system mounted over a directory below a
configured path, and a directory reached through two configured paths (symlinks, bind
mounts) is watched once, under the path that reached it last.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from henbackup.excludes import Excluder
from henbackup.linux import (
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    statfs_type,
)
from henbackup.loop import Loop, Timer
from henbackup.worker.inotify_hub import Event, InotifyHub

_CHANGES = IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
_SELF = IN_DELETE_SELF | IN_MOVE_SELF
# IN_MASK_ADD: a directory can be both in a tree and a parent waiting for a path (symlinks).
_TREE_MASK = _CHANGES | _SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK | IN_MASK_ADD
_FILE_MASK = IN_MODIFY | IN_ATTRIB | _SELF | IN_DONT_FOLLOW | IN_MASK_ADD
_ANCHOR_MASK = IN_CREATE | IN_MOVED_TO | _SELF | IN_ONLYDIR | IN_MASK_ADD
_NEW_DIR = IN_CREATE | IN_MOVED_TO
_SLOW = IN_ISDIR | _SELF | IN_IGNORED | IN_Q_OVERFLOW | IN_UNMOUNT  # events that need thought

_ROOT = 0  # parent of a path's own directory
_WD_BYTES = 4  # a wd is a positive C int
_MAX_DEPTH = 4096  # PATH_MAX / 2: deeper would be a loop in stale records
# A directory is opened in its parent's fd, its last component not followed: a link put in
# place of a watched directory (by a user who can write in the tree) leads nowhere.
_OPEN_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# _open_child: the parent's recorded path names another directory now (it was renamed, or
# a link took its place, and the event saying so is not handled yet)
_PARENT_MOVED = -errno.ESTALE
_NLINK_FILE_SYSTEMS = {0xEF53, 0x58465342, 0x01021994}  # statfs f_type: ext2-4, xfs, tmpfs
RETRY_AFTER = 60.0  # seconds between two attempts to set up a watch that hit a limit
_NOT_WATCHED = (
    f"changes are not watched, backups follow their schedule only; tried again every "
    f"{RETRY_AFTER:g}s"
)

ChangeCallback = Callable[[int], None]


class _LimitReached(Exception):
    """Out of inotify watches or instances; the message says how to raise the limit."""


class _Path:
    """One configured path: its watch, and the existing ancestor waiting for it when gone."""

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.wd = 0  # the path's own watch; 0 while it is missing or excluded
        self.anchor = 0  # watch of the nearest existing ancestor
        self.awaited = b""  # the name under `anchor` that leads to the path
        self.device: int | None = None  # the file system of what is watched at the path


class Watcher:
    """Watches `paths` (absolute) recursively; see the module docstring. `hub`: the inotify
    instance it shares with other Watchers (None: an instance of its own)."""

    def __init__(
        self,
        paths: Iterable[str],
        excluder: Excluder,
        loop: Loop,
        on_change: ChangeCallback,
        on_overflow: Callable[[], None],
        on_watch_limit: Callable[[str], None],
        retry_after: float = RETRY_AFTER,
        hub: InotifyHub | None = None,
    ) -> None:
        self.excluder = excluder
        self.loop = loop
        self.hub = hub or InotifyHub(loop)
        self.on_change = on_change
        self.on_overflow = on_overflow
        self.on_watch_limit = on_watch_limit
        self._paths = [_Path(os.fsencode(p)) for p in _outermost(paths)]
        self._joined = False  # whether it watches through the hub
        self.retry_after = retry_after
        self._retry: Timer | None = None  # while off after a limit: the next attempt
        self._recheck: Timer | None = None  # while on: the next look for mounts (recheck)
        self._limited = False  # the limit was said, and no start worked since
        self._reset_tables()

    # lifecycle
    @property
    def active(self) -> bool:
        """Whether the watch runs (False before start, after close or a limit)."""
        return self._joined

    @property
    def watch_count(self) -> int:
        """How many directories (and file paths) are watched."""
        return len(self._node)

    def start(self) -> None:
        """Open inotify and watch every path. Running out of watches or instances calls
        on_watch_limit (once until a start works) and leaves the watcher off until its next
        attempt, `retry_after` seconds later (or start() called again)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.active:
            return
        try:
            self._open()
            for watched in self._paths:
                self._establish(watched)
        except _LimitReached as limit:
            self._give_up(str(limit))
            return
        if self._limited:  # what changed while nothing was watched is unknown: as if lost
            self.on_overflow()
        self._limited = False
        self._recheck = self.loop.call_later(self.retry_after, self.recheck)

    def recheck(self) -> None:
        """Set up again each path now on another file system than the one watched (one was
        mounted on it or above it, or unmounted), and each missing path that is there now:
        inotify sees no mount. What is there may hold any change: as after lost events.
        Every `retry_after` seconds while the watch runs."""
        self._recheck = None
        if not self.active:
            return
        moved = [watched for watched in self._paths if _device(watched.path) != watched.device]
        if moved:
            try:
                for watched in moved:
                    self._establish(watched)
                self._after_batch()
            except _LimitReached as limit:
                self._give_up(str(limit))
                return
            self.on_overflow()
        self._recheck = self.loop.call_later(self.retry_after, self.recheck)

    def close(self) -> None:
        """Release every watch (the hub's last Watcher closes the instance: at once)."""
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._joined:
            self._joined = False
            self.hub.leave(self, self._node.keys() | self._anchors.keys())
        self._reset_tables()

    def fileno(self) -> int:
        """The inotify instance's descriptor, -1 while not watching."""
        return self.hub.fileno() if self._joined else -1

    def _open(self) -> None:
        try:
            self.hub.join(self)
        except OSError as error:  # also ENFILE, ENOMEM: raised, it would end the watcher
            if error.errno == errno.EMFILE:
                message = _limit_message("max_user_instances", "instances", b"")
            else:
                message = f"cannot open inotify ({error.strerror}): {_NOT_WATCHED}"
            raise _LimitReached(message) from None
        self._joined = True

    def _give_up(self, message: str) -> None:
        self.close()
        self._retry = self.loop.call_later(self.retry_after, self.start)
        if not self._limited:
            self._limited = True
            self.on_watch_limit(message)

    def _reset_tables(self) -> None:
        for watched in self._paths:
            watched.wd = watched.anchor = 0
            watched.device = None
        # Keyed by watch descriptor: the tree of watched directories (see _set).
        self._node: dict[int, bytes] = {}
        self._anchors: dict[int, list[_Path]] = {}
        self._roots: dict[int, _Path] = {}
        self._paths_cache: dict[int, bytes] = {}
        self._nlink_trusted: dict[int, bool] = {}  # by st_dev
        self._orphans = False  # a directory left the tree: sweep its subtree
        self._walk_later: list[tuple[int, bytes]] = []  # (parent, name)
        self._visited: set[int] | None = None  # during a rescan: the wds seen

    # the watch table
    def _add_watch(self, path: bytes, mask: int, fd: int = -1) -> int:
        """The wd watching `path` (or the very file of `fd`, named `path`), or -errno.
        ENOSPC raises _LimitReached."""
        target = path
        if fd >= 0:  # the magic link /proc/self/fd/N is to be followed, to the file
            target, mask = _fd_path(fd), mask & ~IN_DONT_FOLLOW
        try:
            return self.hub.add_watch(target, mask, self)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise _LimitReached(_limit_message("max_user_watches", "watches", path)) from None
            return -error.errno

    def _set(self, wd: int, parent: int, name: bytes) -> None:
        """Record directory `wd`: its parent's wd (_ROOT for a configured path) and its name
        (a configured path's whole path), in one bytes object: at 100,000 directories, a
        second table would cost each ~50 bytes more."""
        self._node[wd] = parent.to_bytes(_WD_BYTES, "little") + name
        if self._visited is not None:
            self._visited.add(wd)

    def _known(self, wd: int) -> bool:
        return wd in self._node

    def _parent(self, wd: int) -> int:
        return _parent_of(self._node[wd])

    def holds(self, wd: int) -> bool:
        """Whether this Watcher watches through `wd` (the hub asks; see InotifyHub)."""
        return wd in self._node or wd in self._anchors

    def _free(self, wd: int, remove: bool) -> None:
        """Forget `wd`; `remove`: also release it (unless still an anchor)."""
        if self._node.pop(wd, None) is None:
            return
        if self._roots.get(wd) is not None:
            self._roots.pop(wd).wd = 0
        if remove and wd not in self._anchors:
            self._rm_watch(wd)

    def _rm_watch(self, wd: int) -> None:
        self.hub.release(wd, self)  # the kernel drops it once no Watcher holds it

    def _dir_path(self, wd: int) -> bytes | None:
        """The path of watched directory `wd` (cached until a directory moves), or None when
        it was cut off from every configured path (its subtree awaits the sweep)."""
        cached = self._paths_cache.get(wd)
        if cached is not None:
            return cached
        names: list[bytes] = []
        at = wd
        while len(names) < _MAX_DEPTH:
            node = self._node.get(at)
            if node is None:
                return None
            names.append(node[_WD_BYTES:])
            parent = _parent_of(node)
            if parent == _ROOT:
                path = b"/".join(reversed(names))
                if len(self._paths_cache) > 4096:
                    self._paths_cache.clear()
                self._paths_cache[wd] = path
                return path
            at = parent
        return None

    def _excluded(self, path: bytes, name: bytes) -> bool:
        """Whether restic skips `path` (named `name`) inside a directory it does not skip."""
        if not self.excluder:
            return False
        if self.excluder.name_only:
            return self.excluder.excluded_name(os.fsdecode(name))
        return self.excluder.excluded(os.fsdecode(path))

    def _subdirectories(self, fd: int) -> list[bytes]:
        """Names of the directories in directory `fd` (not following symlinks); [] if
        unreadable.

        Call it after watching it: a directory made later is an event, not a miss. A
        link count of 2 says "no subdirectory" on file systems that keep it, and saves
        reading the directory: most directories are leaves (find's leaf optimisation).
        """
        try:
            status = os.fstat(fd)
            if status.st_nlink == 2 and self._trusts_nlink(_fd_path(fd), status.st_dev):
                return []
            with os.scandir(_fd_path(fd)) as entries:  # by path: bytes names
                return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    def _trusts_nlink(self, path: bytes, device: int) -> bool:
        trusted = self._nlink_trusted.get(device)
        if trusted is None:
            trusted = self._nlink_trusted[device] = _nlink_counts_subdirectories(path)
        return trusted

    # watching trees
    def _watch_tree(self, wd: int, fd: int, parent: int, name: bytes, path: bytes) -> None:
        """Record directory `wd` (open as `fd`, closed here) and watch every directory below
        that is not excluded (the caller checked `path` itself). Each is opened in its
        parent, whose fd stays open until its subdirectories are done: no link is followed."""
        self._set(wd, parent, name)
        frames = [(fd, wd, path, self._subdirectories(fd))]
        try:
            while frames:
                fd, wd, path, children = frames[-1]
                if not children or len(frames) >= _MAX_DEPTH:
                    os.close(frames.pop()[0])
                    continue
                child = children.pop()
                child_path = path + b"/" + child
                if self._excluded(child_path, child):
                    continue
                child_wd, child_fd = self._open_watch(child_path, child, fd)
                if child_wd > 0:
                    self._set(child_wd, wd, child)
                    frames.append((child_fd, child_wd, child_path, self._subdirectories(child_fd)))
        finally:
            for frame in frames:
                os.close(frame[0])

    def _open_watch(self, path: bytes, name: bytes, at: int | None) -> tuple[int, int]:
        """Open directory `name` in directory fd `at` (None: `name` is a path) and watch it;
        returns its wd and fd, or -errno (vanished, not a directory, a link, not readable:
        restic skips it too) and -1."""
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=at)
        except OSError as error:  # a link: ELOOP
            return -(errno.ENOTDIR if error.errno == errno.ELOOP else error.errno), -1
        try:
            wd = self._add_watch(path, _TREE_MASK, fd)
        except _LimitReached:
            os.close(fd)
            raise
        if wd < 0:
            os.close(fd)
            return wd, -1
        return wd, fd

    def _watch_child(self, parent: int, name: bytes, path: bytes) -> None:
        """Watch directory `name` (at `path`) of watched `parent`, and below."""
        wd, fd = self._open_child(parent, name, path)
        if wd > 0:
            self._watch_tree(wd, fd, parent, name, path)

    def _open_child(self, parent: int, name: bytes, path: bytes) -> tuple[int, int]:
        """_open_watch of `name` (at `path`) in watched directory `parent`."""
        at = self._open_watched(parent, path[: -len(name) - 1])
        if at < 0:
            return _PARENT_MOVED, -1
        try:
            return self._open_watch(path, name, at)
        finally:
            os.close(at)

    def _open_watched(self, wd: int, path: bytes) -> int:
        """An fd of watched directory `wd` opened by its recorded `path`, or -1 when `path`
        names another directory now (it moved, or a link took the place of one above)."""
        try:
            fd = os.open(path, _OPEN_DIR)
        except OSError:
            return -1
        try:
            there = self._add_watch(path, _TREE_MASK, fd)  # the same wd: the same directory
        except _LimitReached:
            os.close(fd)
            raise
        if there == wd:
            return fd
        os.close(fd)
        self._drop_newcomer(there)
        return -1

    def _drop_newcomer(self, wd: int) -> None:
        """Release `wd` if only a look at a path added it (its own event adds it)."""
        if wd > 0 and not self._known(wd) and wd not in self._anchors:
            self._rm_watch(wd)

    def _establish(self, watched: _Path) -> None:
        """Anchor `watched` at its nearest existing ancestor, and watch (or walk again) what
        is at its path now; a different directory there replaces the old one's watches."""
        self._anchor(watched)
        wd = 0
        if not (self.excluder and self.excluder.excluded(os.fsdecode(watched.path))):
            wd, fd = self._open_watch(watched.path, watched.path, None)
            if wd > 0:
                self._watch_tree(wd, fd, _ROOT, watched.path, watched.path)
            elif wd == -errno.ENOTDIR:  # a file (or a symlink: restic saves the link itself)
                wd = self._add_watch(watched.path, _FILE_MASK)
                if wd > 0:
                    self._set(wd, _ROOT, watched.path)
        wd = max(wd, 0)
        old = watched.wd
        if old and old != wd:
            self._roots.pop(old, None)
            if self._known(old) and self._parent(old) == _ROOT:
                self._free(old, remove=True)
                self._orphans = True  # its subtree goes with it
        watched.wd = wd
        watched.device = _device(watched.path)  # excluded or unreadable: kept as it is
        if wd:
            self._roots[wd] = watched

    def _anchor(self, watched: _Path) -> None:
        """Watch the nearest existing ancestor of `watched` for the name leading to it."""
        child = watched.path
        while True:
            parent = os.path.dirname(child)
            if parent == child:
                self._drop_anchor(watched)
                return  # "/" is never created
            wd = self._add_watch(parent, _ANCHOR_MASK)
            if wd > 0:
                break
            child = parent
        if wd != watched.anchor:
            self._drop_anchor(watched)
            watched.anchor = wd
            self._anchors.setdefault(wd, []).append(watched)
        watched.awaited = os.path.basename(child)

    def _drop_anchor(self, watched: _Path) -> None:
        waiting = self._anchors.get(watched.anchor)
        if waiting is None:
            return
        waiting.remove(watched)
        if not waiting:
            del self._anchors[watched.anchor]
            if not self._known(watched.anchor):
                self._rm_watch(watched.anchor)
        watched.anchor = 0

    # events
    def handle(self, events: list[Event]) -> None:
        """The hub read events of this Watcher's watches (an overflow: everyone's)."""
        if not self._joined:
            return  # gave up within the same read
        try:
            changes = self._process(events)
            self._after_batch()
        except _LimitReached as limit:
            self._give_up(str(limit))
            changes = 1  # a new directory, at least: what did not fit
        if changes:
            self.on_change(changes)

    def _process(self, events: list[Event]) -> int:
        """Handle one read's events; returns how many changes they show."""
        changes = 0
        names, anchors = self._node, self._anchors
        # The common case stays inline: a file event in a watched directory, whose
        # exclusion needs no path (no patterns, or patterns about names only).
        fast = not self.excluder or self.excluder.name_only
        excluded_name = self.excluder.excluded_name if self.excluder else None
        for wd, mask, name in events:
            if fast and name and not mask & _SLOW and wd in names and wd not in anchors:
                if excluded_name is None or not excluded_name(os.fsdecode(name)):
                    changes += 1
                continue
            if mask & IN_Q_OVERFLOW:
                self._overflowed()
                continue
            if wd in anchors:
                changes += self._anchor_event(wd, mask, name)
            if self._known(wd):
                changes += self._tree_event(wd, mask, name)
        return changes

    def _tree_event(self, wd: int, mask: int, name: bytes) -> int:
        """One event of a watched directory (or file path); returns 1 for a change, else 0."""
        if mask & IN_IGNORED:  # deleted, unmounted, or removed by us
            watched = self._roots.get(wd)
            self._free(wd, remove=False)
            if watched is not None:
                self._establish(watched)
            return 0
        if mask & IN_MOVE_SELF:
            return self._moved(wd)
        if not name:
            return 1 if mask & (_CHANGES | IN_DELETE_SELF) else 0
        directory = self._dir_path(wd)
        if directory is None:
            return 0
        path = directory + b"/" + name
        if self._excluded(path, name):
            return 0
        # IN_ATTRIB: a directory that could not be watched (EACCES) may be readable now.
        if mask & IN_ISDIR and mask & (_NEW_DIR | IN_ATTRIB):
            self._new_directory(path, wd, name, moved=bool(mask & IN_MOVED_TO))
        return 1

    def _moved(self, wd: int) -> int:
        """Watched directory `wd` was renamed; returns 1 if it left the tree, else 0.

        A move within the tree was already followed (IN_MOVED_TO comes first): the inode
        at its recorded path is then still `wd`.
        """
        path = self._dir_path(wd)
        now_there = self._add_watch(path, _TREE_MASK) if path is not None else 0
        if now_there == wd:
            return 0
        self._drop_newcomer(now_there)
        watched = self._roots.get(wd)
        self._free(wd, remove=True)
        self._orphans = True  # its subtree goes with it
        if watched is not None:
            self._establish(watched)
        return 1

    def _new_directory(self, path: bytes, parent: int, name: bytes, moved: bool) -> None:
        """A directory was created in (or moved into, `moved`) watched `parent`."""
        wd, fd = self._open_child(parent, name, path)
        if wd == _PARENT_MOVED:  # a move this read tells of later: look again after it
            self._walk_later.append((parent, name))
            return
        if wd < 0:
            return
        if not self._known(wd):  # new here: watch it and what it already holds
            self._watch_tree(wd, fd, parent, name, path)
            return
        os.close(fd)
        if not moved:
            return  # created, and already found by the scan of its new parent
        self._paths_cache.clear()  # moved within the tree: every path below it changed
        moved_path = self._roots.pop(wd, None)
        if moved_path is not None:  # a configured path moved into another one's tree
            moved_path.wd = 0
        if self.excluder.name_only:
            self._set(wd, parent, name)  # below it, exclusion depends on names only
            return
        # Patterns with "/" may now match (or no longer match) below it: watch it anew
        # once the sweep has dropped the old subtree.
        self._free(wd, remove=True)
        self._orphans = True
        self._walk_later.append((parent, name))

    def _anchor_event(self, wd: int, mask: int, name: bytes) -> int:
        """An event of a directory waiting for a configured path; returns 1 for a change."""
        changes = 0
        for watched in list(self._anchors.get(wd, ())):
            if mask & (_SELF | IN_IGNORED):  # the ancestor itself went away
                self._drop_anchor(watched)
                self._anchor(watched)
            elif name == watched.awaited and mask & _NEW_DIR:  # (a shared wd hears more)
                before = watched.wd
                self._establish(watched)
                changes += watched.wd != before
        if mask & IN_IGNORED:
            self._anchors.pop(wd, None)
        return changes

    def _overflowed(self) -> None:
        """The kernel dropped events: rescan everything after this read."""
        self._visited = set()
        self.on_overflow()

    def _after_batch(self) -> None:
        """Deferred work after a read: rescan, sweep, walk the directories that moved."""
        if self._visited is not None:
            self._rescan()
        if self._orphans:
            self._sweep()
        for parent, name in self._walk_later:
            directory = self._dir_path(parent)  # after this read's moves
            if directory is not None:
                self._watch_child(parent, name, directory + b"/" + name)
        self._walk_later.clear()

    def _rescan(self) -> None:
        """Walk every path again: watch what was missed, forget what is gone."""
        for watched in self._paths:
            self._establish(watched)
        visited, self._visited = self._visited or set(), None
        for wd in [wd for wd in self._node if wd not in visited]:
            self._free(wd, remove=True)
        self._paths_cache.clear()

    def _sweep(self) -> None:
        """Forget every watch whose chain of parents no longer reaches a configured path."""
        self._orphans = False
        state: dict[int, bool] = {}  # wd → whether it reaches a configured path
        for wd in self._node:
            if wd in state:
                continue
            chain, at, verdict = [], wd, False
            # A stale IN_MOVED_TO can put a directory below its own descendant: a cycle
            # ends at _MAX_DEPTH, as in _dir_path, and reaches no root (its watches go;
            # the later events of the moves that made it stale, or a rescan, add them back).
            while len(chain) < _MAX_DEPTH:
                if at not in self._node:
                    break
                if at in state:
                    verdict = state[at]
                    break
                chain.append(at)
                parent = self._parent(at)
                if parent == _ROOT:
                    verdict = at in self._roots
                    break
                at = parent
            for link in chain:
                state[link] = verdict
        for wd in [wd for wd, reaches in state.items() if not reaches]:
            self._free(wd, remove=True)
        self._paths_cache.clear()


def _parent_of(node: bytes) -> int:
    """The parent's wd in a directory's record (Watcher._set)."""
    return int.from_bytes(node[:_WD_BYTES], "little")


def _fd_path(fd: int) -> bytes:
    """A path to the very file open as `fd` (inotify_add_watch takes paths only)."""
    return b"/proc/self/fd/%d" % fd


def _nlink_counts_subdirectories(path: bytes) -> bool:
    """Whether the file system of `path` keeps a directory's link count at 2 + its
    subdirectories (as ext4, xfs and tmpfs do; btrfs and overlayfs report 1, NFS may lie)."""
    try:
        return statfs_type(path) in _NLINK_FILE_SYSTEMS
    except OSError:
        return False


def _is_dir(path: bytes) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _outermost(paths: Iterable[str]) -> list[str]:
    """Normalised absolute paths without those inside another one (watched once)."""
    cleaned = sorted({os.path.abspath(p) for p in paths})
    kept: list[str] = []
    for path in cleaned:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _limit_message(setting: str, what: str, path: bytes) -> str:
    """What happened and how to raise fs.inotify.`setting`."""
    try:
        current = int(Path(f"/proc/sys/fs/inotify/{setting}").read_text())
    except (OSError, ValueError):
        current = 0
    wanted = max(current * 2, 524288 if what == "watches" else 1024)
    where = f" while watching {os.fsdecode(path)}" if path else ""
    return (
        f"out of inotify {what} (fs.inotify.{setting} = {current}){where}: {_NOT_WATCHED}. "
        f"Raise the limit with "
        f"`sysctl fs.inotify.{setting}={wanted}` (and a file in /etc/sysctl.d/ to keep it)"
    )


def _device(path: bytes) -> int | None:
    """The file system `path` is on (not following a last link), None when it is missing."""
    try:
        return os.lstat(path).st_dev
    except OSError:
        return None
