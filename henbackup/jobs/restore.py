"""Restoring one snapshot from one repository, where nobody else could redirect it.

restic follows links it finds where it writes (0.14 even a link in place of a file or a
directory; 0.18 replaces those, but still writes through the directories on its way), and
writes through any directory it is given. So a restore writes either into a directory made
fresh with mkdir (mode 0700, root's) at a place only root can change: nothing anyone planted
can be inside it, no one can swap it for a link while restic writes, and no one else can open
what restic writes there; or, in place, over trees that hold no link and that only root can
change, all the way down from /: no one else can plant a link there while restic writes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from henbackup.config.model import Config
from henbackup.engine.base import Engine, RestoreResult, Snapshot, plain_include
from henbackup.errors import SnapshotNotFound, UnsafeTarget, UsageError
from henbackup.jobs.job import Job, ProgressReporter, run_job
from henbackup.jobs.targets import target_for
from henbackup.observe.events import EmitFunction, FieldValue


def find_snapshot(config: Config, engine: Engine, repository: str, wanted: str) -> Snapshot:
    """The snapshot whose id starts with `wanted`; raises SnapshotNotFound (or EngineError)."""
    target = target_for(config, config.repositories[repository])
    matches = [s for s in engine.snapshots(target) if s.id.startswith(wanted.lower())]
    if len(matches) != 1:
        how = "no snapshot" if not matches else "more than one snapshot"
        raise SnapshotNotFound(
            f"{how} with id {wanted!r} in {repository}: "
            f"see henbackupctl list-snapshots {repository}"
        )
    return matches[0]


def run_restore(
    job: Job,
    config: Config,
    engine: Engine,
    emit: EmitFunction,
    snapshot: Snapshot,
    destination: str,
    includes: tuple[str, ...] = (),
    in_place: bool = False,
) -> RestoreResult:
    """Restore `snapshot` from `job.repository` under `destination`; raises on failure.

    `in_place` (destination /): the trees it writes are checked first, as late as can be."""
    target = target_for(config, config.repositories[job.repository])

    def work() -> RestoreResult:
        if in_place:
            check_in_place(snapshot.paths, includes)
        progress = ProgressReporter(job, emit)
        return engine.restore(target, snapshot.id, destination, includes, progress)

    def outcome(result: RestoreResult) -> tuple[str, dict[str, FieldValue]]:
        return f": snapshot {snapshot.short_id} into {result.target}", {
            "snapshot": snapshot.id,
            "target": result.target,
            "files_restored": result.files_restored,
            "bytes_restored": result.bytes_restored,
        }

    return run_job(job, emit, work, outcome, engine)


def restore_directory(target: str, name: str) -> Path:
    """Where a restore into `target` (absolute, normalized) writes: `target` itself when it
    does not exist yet (made now with mkdir, mode 0700, in a parent checked as
    fresh_directory checks it), else a fresh directory inside it (see fresh_directory): what
    exists may hold links anyone planted."""
    parent, leaf = os.path.split(target)
    if leaf:
        fd = _open_trusted(parent)
        try:
            os.mkdir(leaf, 0o700, dir_fd=fd)
            _drop_inherited_acls(leaf, fd)
            return Path(target)
        except FileExistsError:
            pass
        finally:
            os.close(fd)
    return fresh_directory(target, name)


def seen_otherwise(base: Mapping[str, object] | None, target: str) -> str | None:
    """The directory the client saw at or above `target` (`base`: its path, device and
    inode, as henbackupctl sends them), if this process sees another one there (or none):
    a mount of its own, as the unit's PrivateTmp= makes of /tmp and /var/tmp. None when they
    are the same, or no `base` was sent. Raises UsageError for a `base` of another shape."""
    if base is None:
        return None
    path, device, inode = base.get("path"), base.get("device"), base.get("inode")
    if not (
        isinstance(path, str)
        and "\0" not in path
        and all(isinstance(n, int) and not isinstance(n, bool) for n in (device, inode))
        and (path == "/" or target == path or target.startswith(path.rstrip("/") + "/"))
    ):
        raise UsageError(
            "target_base: give the path, device and inode of a directory at or above --target"
        )
    try:
        seen = os.lstat(path)
    except OSError:
        return path
    return None if (seen.st_dev, seen.st_ino) == (device, inode) else path


def fresh_directory(parent: str, name: str) -> Path:
    """A new directory `parent`/NAME-WHEN (or NAME-WHEN-2…), made with mkdir, mode 0700.

    `parent` is absolute; what is missing of it is made (0700). Raises UnsafeTarget when a
    part of `parent` is a symbolic link or a directory that anyone but root may change.
    """
    fd = _open_trusted(parent)
    try:
        stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        for attempt in itertools.count(1):
            child = stem if attempt == 1 else f"{stem}-{attempt}"
            with contextlib.suppress(FileExistsError):
                os.mkdir(child, 0o700, dir_fd=fd)
                _drop_inherited_acls(child, fd)
                return Path(parent, child)
    finally:
        os.close(fd)
    raise AssertionError("unreachable")


def _drop_inherited_acls(name: str, dir_fd: int) -> None:
    """Remove the ACLs directory `name` (in `dir_fd`, just made) inherited from a default ACL
    of its parent: else what restic makes in it would inherit the parent's default ACL too,
    and let whoever it names write there (restic restores a directory's group-write bits)."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for acl in (DEFAULT_ACL, ACCESS_ACL):
            try:
                os.removexattr(fd, acl)
            except OSError as error:
                if error.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                    raise
    finally:
        os.close(fd)


def _open_trusted(path: str) -> int:
    """`path` opened as a directory, part by part, never through a link, each part checked."""
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        raise UnsafeTarget(f"{path}: give a plain absolute path (no . or ..)")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd, walked = os.open("/", flags), Path("/")
    try:
        _check_trusted(fd, walked)
        for part in walked.joinpath(path).parts[1:]:
            walked = walked / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
                _drop_inherited_acls(part, fd)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as error:
                raise UnsafeTarget(
                    f"{walked} is a symbolic link or not a directory: a restore never follows"
                    " links; give the real path of a directory"
                ) from error
            os.close(fd)
            fd = child
            _check_trusted(fd, walked)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_trusted(fd: int, path: Path) -> None:
    """Raises UnsafeTarget if someone but root (or this daemon's user) may change `path`'s
    entries: they could replace the restore's directory with a link while restic writes."""
    who = _changed_by(os.fstat(fd), fd)
    if who is not None:
        raise UnsafeTarget(
            f"{path} can be changed by {who}, who could redirect the restore: restore into a"
            " directory only root can change (the default, or another --target)"
        )


def _changed_by(st: os.stat_result, where: int | Path, sticky_ok: bool = True) -> str | None:
    """Who but root (or this daemon's user) may add, remove or rename the entries of the
    directory `st` is of (`where`: an fd or a path of it), or None if no one. `sticky_ok`: a
    sticky directory of root's counts as no one's (others may add entries there, but not
    move or remove root's). With an access ACL, the group bits are its mask: writable, they
    let whoever the ACL names write."""
    sticky = sticky_ok and bool(st.st_mode & stat.S_ISVTX)
    if st.st_uid not in (0, os.geteuid()):
        return f"uid {st.st_uid}"
    if st.st_mode & stat.S_IWOTH and not sticky:
        return "everyone"
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0 and not sticky:
        return f"group {st.st_gid}"
    if st.st_mode & stat.S_IWGRP and not sticky and _has_acl(where):
        return "whoever its ACL lets write (setfacl -b removes it)"
    return None


ACCESS_ACL, DEFAULT_ACL = "system.posix_acl_access", "system.posix_acl_default"


def _has_acl(where: int | Path, acl: str = ACCESS_ACL) -> bool:
    """Whether the file `where` is (an fd, or a path not followed) has that ACL."""
    try:
        if isinstance(where, int):
            os.getxattr(where, acl)
        else:
            os.getxattr(where, acl, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return False
        raise
    return True


# --- in place -------------------------------------------------------------------------

FRESH_INSTEAD = "restore into a fresh directory with --target DIR instead"


def check_in_place(paths: Sequence[str], includes: Sequence[str]) -> None:
    """Raises UnsafeTarget unless a restore to / may write `paths` (narrowed by `includes`).

    Every directory from / down to each path and every directory below it must be one only
    root may change, and none of it a symbolic link: then no one else can plant a link while
    restic writes, and there is none already that restic could follow (0.14 follows a link
    in place of a file or a directory). On the way down, a sticky directory of root's (as
    /tmp) will do if what restic writes in it exists and is root's: others cannot move or
    remove that (its owner could).
    Nothing is followed while looking (lstat only).
    """
    for root in in_place_roots(paths, includes):
        try:
            if _check_way(Path(root)):
                _check_tree(Path(root))
        except OSError as error:
            raise UnsafeTarget(
                f"--in-place: cannot look at {error.filename}: {error.strerror}; {FRESH_INSTEAD}"
            ) from None


def in_place_roots(paths: Sequence[str], includes: Sequence[str]) -> tuple[str, ...]:
    """The trees a restore to / writes: the snapshot's `paths`, or where plain absolute
    `includes` narrow them (a pattern may match anywhere: then every path)."""
    if not includes or not all(plain_include(include) for include in includes):
        return tuple(paths)
    return tuple(
        max(include, path, key=len)
        for include in includes
        for path in paths
        if _below(include, path) or _below(path, include)
    )


def _below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _check_way(path: Path) -> bool:
    """Checks / and every existing part of `path` down to it; whether `path` exists."""
    others: str | None = None  # who else may add entries to the last directory (sticky)
    for part in (*reversed(path.parents), path):
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            if others is not None:  # they could plant what restic is about to make
                raise _unsafe(part.parent, others) from None
            _check_inheritance(part.parent)
            return False  # restic makes the rest, below directories only root may change
        _check_entry(part, st, sticky_ok=part != path)
        if not stat.S_ISDIR(st.st_mode):
            if others is not None and st.st_uid not in (0, os.geteuid()):
                raise _unsafe(part, f"uid {st.st_uid}")  # its owner may swap it there
            return False  # a file: restic replaces it or fails
        others = _changed_by(st, part, sticky_ok=False)
    return True


def _check_tree(top: Path) -> None:
    """Checks every entry below the directory `top`, through no link."""
    folders = [top]
    while folders:
        _check_inheritance(folders[-1])
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                _check_entry(Path(entry.path), st)
                if stat.S_ISDIR(st.st_mode):
                    folders.append(Path(entry.path))


def _check_entry(path: Path, st: os.stat_result, sticky_ok: bool = False) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeTarget(
            f"--in-place: {path} is a symbolic link, which restic could follow: {FRESH_INSTEAD}"
        )
    who = _changed_by(st, path, sticky_ok) if stat.S_ISDIR(st.st_mode) else None
    if who is not None:
        raise _unsafe(path, who)


def _check_inheritance(directory: Path) -> None:
    """What restic makes in `directory` must not inherit a default ACL: it could let others
    write in it (their rights are masked by its mode's group bits, which restic restores)."""
    if _has_acl(directory, DEFAULT_ACL):
        raise UnsafeTarget(
            f"--in-place: {directory} has a default ACL, which may let others change what"
            f" restic makes in it (setfacl -k removes it): {FRESH_INSTEAD}"
        )


def _unsafe(path: Path, who: str) -> UnsafeTarget:
    return UnsafeTarget(
        f"--in-place: {path} can be changed by {who}, who could plant a link while restic"
        f" writes: {FRESH_INSTEAD}"
    )
