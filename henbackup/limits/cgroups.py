"""The cgroup trees of this host: which one a job can use, its leaves, what they measure.

cgroup v2 (unified): with Delegate=yes the service owns its cgroup D (systemd marks it with
the xattr trusted.delegate; a cgroup without it is left alone). The master moves
itself (and so every process it forks) into the leaf D/daemon and enables the controllers
in D/cgroup.subtree_control (a cgroup with processes of its own cannot hand controllers to
its children); each job run then gets a leaf D/job-<pid> beside it. cgroup v1 (hybrid):
a leaf henbackup-<pid> below our own cgroup in each per-controller hierarchy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
DAEMON_LEAF = "daemon"
V2_CONTROLLERS = ("cpu", "io", "memory")
# cpuacct: CPU time, no limit; freezer: to pause a job's programs (limits/pause.py)
V1_HIERARCHIES = ("cpu", "blkio", "memory", "cpuacct", "freezer")
BLKIO_WEIGHT_FILES = ("blkio.weight", "blkio.bfq.weight")  # CFQ's, else BFQ's

Layout = Literal["v2", "v1", "none"]


@dataclass(frozen=True)
class Host:
    """What the cgroups of this host offer our jobs.

    `bases`: where job leaves go: {"": D} on v2, {controller: our cgroup in its
    hierarchy} on v1. `missing`: controller → why it cannot be used.
    """

    layout: Layout
    bases: Mapping[str, Path] = field(default_factory=dict)
    missing: Mapping[str, str] = field(default_factory=dict)

    def controllers(self) -> set[str]:
        if self.layout == "v2":
            return set(V2_CONTROLLERS) - set(self.missing)
        return set(self.bases)


def own_cgroups(text: str) -> dict[str, str]:
    """/proc/self/cgroup → {controller: path}; the unified hierarchy's path is under ""."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for name in parts[1].split(",") if parts[1] else [""]:
            own[name] = parts[2]
    return own


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _read_own(proc: Path) -> dict[str, str]:
    try:
        return own_cgroups(proc.read_text())
    except OSError:
        return {}


def detect(root: Path = ROOT, proc: Path = PROC_SELF_CGROUP) -> Host:
    """The layout this process can place jobs in, and why any controller is missing."""
    own = _read_own(proc)
    if (root / "cgroup.controllers").exists():
        return _detect_v2(root, own.get(""))
    if any((root / name / "cgroup.procs").exists() for name in V1_HIERARCHIES):
        return _detect_v1(root, own)
    return Host("none", missing={c: f"no cgroup hierarchy at {root}" for c in V2_CONTROLLERS})


def _detect_v2(root: Path, path: str | None) -> Host:
    if path is None:
        return Host("none", missing=dict.fromkeys(V2_CONTROLLERS, "not in a cgroup"))
    here = _inside(root, path)
    base = here.parent
    if here.name != DAEMON_LEAF or not os.access(base / "cgroup.subtree_control", os.W_OK):
        why = f"cgroup {path} is not delegated to henbackup (run by systemd, Delegate=yes)"
        return Host("none", missing=dict.fromkeys(V2_CONTROLLERS, why))
    enabled = _words(base / "cgroup.subtree_control")
    missing = {
        c: f"controller {c} is not enabled for cgroup {base.relative_to(root)}"
        for c in V2_CONTROLLERS
        if c not in enabled
    }
    return Host("v2", {"": base}, missing)


def _detect_v1(root: Path, own: dict[str, str]) -> Host:
    bases: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for name in V1_HIERARCHIES:
        base = _inside(root / name, own.get(name, "/"))
        if not (root / name / "cgroup.procs").exists() or name not in own:
            missing[name] = f"no cgroup v1 {name} hierarchy is mounted"
        elif not os.access(base, os.W_OK):
            missing[name] = f"cgroup v1 {name} hierarchy is read-only here ({base})"
        else:
            bases[name] = base
    if "blkio" in bases and not any((bases["blkio"] / f).exists() for f in BLKIO_WEIGHT_FILES):
        del bases["blkio"]
        missing["blkio"] = "the I/O scheduler offers no blkio weight (CFQ or BFQ needed)"
    return Host("v1", bases, missing)


def _words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def prepare_v2(root: Path = ROOT, proc: Path = PROC_SELF_CGROUP) -> str | None:
    """As the master starts on cgroup v2: move ourselves into D/daemon and enable every
    controller we use in D/cgroup.subtree_control. Returns why not, or None."""
    path = _read_own(proc).get("")
    if path is None or not (root / "cgroup.controllers").exists():
        return None  # not v2: nothing to prepare
    here = _inside(root, path)
    if here.name == DAEMON_LEAF:
        return None  # done by an earlier start of this process tree
    if not _delegated(here):  # a login session's scope, say: not ours to rearrange
        return f"cgroup {path} is not delegated to henbackup (run by systemd, Delegate=yes)"
    try:
        leaf = here / DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in (here / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                (leaf / "cgroup.procs").write_text(pid)
        offered = _words(here / "cgroup.controllers")
        wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in offered)
        if wanted:
            (here / "cgroup.subtree_control").write_text(wanted)
    except OSError as exc:
        return f"cannot use cgroup {path}: {exc.strerror}"
    return None


def _delegated(path: Path) -> bool:
    """systemd marks a cgroup it delegates (Delegate=yes) with trusted.delegate = 1 and,
    from 251, user.delegate = 1 too: only the second can be read without CAP_SYS_ADMIN,
    which the unit does not keep."""
    for name in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):  # absent, or hidden from us
            if os.getxattr(path, name) == b"1":
                return True
    return False


@dataclass(frozen=True)
class Usage:
    """What a leaf measured: CPU seconds, peak memory, bytes read and written on disks."""

    cpu_sec: float | None = None
    memory_peak: int | None = None
    read_bytes: int | None = None
    written_bytes: int | None = None


@dataclass(frozen=True)
class Leaf:
    """One job run's cgroup: a directory per hierarchy (one on v2)."""

    layout: Layout
    dirs: Mapping[str, Path]  # controller (v1) or "" (v2) → directory

    def enter(self) -> None:
        """Put the calling process in the leaf (called in a program's child before exec)."""
        for directory in self.dirs.values():
            (directory / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this leaf for its memory limit."""
        if self.layout == "v2":
            events = _keyed(self.dirs[""] / "memory.events")
        elif "memory" in self.dirs:
            events = _keyed(self.dirs["memory"] / "memory.oom_control")
        else:
            return 0
        return events.get("oom_kill", 0)

    def usage(self) -> Usage:
        """What the kernel measured so far (None where the cgroup does not say)."""
        if self.layout == "v2":
            directory = self.dirs[""]
            cpu = _keyed(directory / "cpu.stat").get("usage_usec")
            io = _io_stat(directory / "io.stat")
            return Usage(
                cpu_sec=None if cpu is None else cpu / 1e6,
                memory_peak=_number(directory / "memory.peak"),
                read_bytes=io.get("rbytes"),
                written_bytes=io.get("wbytes"),
            )
        cpu_ns = _number(self.dirs["cpuacct"] / "cpuacct.usage") if "cpuacct" in self.dirs else None
        peak = None
        if "memory" in self.dirs:
            peak = _number(self.dirs["memory"] / "memory.max_usage_in_bytes")
        io = {}
        if "blkio" in self.dirs:
            io = _blkio_bytes(self.dirs["blkio"] / "blkio.throttle.io_service_bytes_recursive")
        return Usage(
            cpu_sec=None if cpu_ns is None else cpu_ns / 1e9,
            memory_peak=peak,
            read_bytes=io.get("Read"),
            written_bytes=io.get("Write"),
        )

    def reset_peak(self) -> None:
        """Start the peak memory afresh for the next job (cgroup v1; v2's memory.peak
        counts from the leaf's creation)."""
        if self.layout == "v1" and "memory" in self.dirs:
            with contextlib.suppress(OSError):
                (self.dirs["memory"] / "memory.max_usage_in_bytes").write_text("0")

    def remove(self) -> None:
        """Remove the leaf's directories (its processes have exited)."""
        for directory in self.dirs.values():
            with contextlib.suppress(OSError):  # a hook's orphan still in it: the kernel keeps it
                directory.rmdir()


def sweep(host: Host) -> list[Path]:
    """Remove the leaves of job processes that are gone without removing theirs (killed);
    returns the removed directories. A leaf still holding a process stays."""
    removed = []
    for base in set(host.bases.values()):
        for leaf in base.glob("job-*"):
            pid = leaf.name.removeprefix("job-")
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            with contextlib.suppress(OSError):
                leaf.rmdir()
                removed.append(leaf)
    return removed


def make_leaf(
    host: Host, name: str, values: Mapping[str, Mapping[str, str]]
) -> tuple[Leaf | None, dict[str, str]]:
    """Create the leaf `name` and write `values` (key → {file: value}) into it.

    Returns the leaf (None if none could be made) and, for each key whose files could not
    be written, why.
    """
    if host.layout == "none":
        return None, {}
    made: dict[str, Path] = {}
    unmade: dict[str, str] = {}  # controller → why its directory could not be made
    for controller, base in host.bases.items():
        try:
            _renew(base / name)
        except OSError as exc:
            unmade[controller] = f"cannot create {base / name}: {exc.strerror}"
            continue
        made[controller] = base / name
    leaf = Leaf(host.layout, made)
    failed: dict[str, str] = {}
    for key, files in values.items():
        for file, value in files.items():
            reason = _write(leaf, file, value, unmade)
            if reason:
                failed[key] = reason
    return (leaf if made else None), failed


def _renew(directory: Path) -> None:
    """Make leaf `directory` afresh. One left by a job process whose pid is reused now (it
    was killed before it removed its leaf) may be frozen and hold another job's limits: it
    is thawed and removed first; if programs of that job still run in it, it is kept,
    thawed (its limit files are rewritten by the caller's values only)."""
    if directory.is_dir():
        thaw(directory)
        with contextlib.suppress(OSError):
            directory.rmdir()
    directory.mkdir(exist_ok=True)


def freeze(file: Path, frozen: bool) -> None:
    """Freeze or thaw through a freezer file: v2 cgroup.freeze or v1 freezer.state."""
    if file.name == "cgroup.freeze":
        file.write_text("1" if frozen else "0")
    else:
        file.write_text("FROZEN" if frozen else "THAWED")


def thaw(leaf: Path) -> None:
    """Thaw `leaf` by whichever freezer file it has; never raises."""
    for name in ("cgroup.freeze", "freezer.state"):
        with contextlib.suppress(OSError):
            if (leaf / name).exists():
                freeze(leaf / name, False)


def _write(leaf: Leaf, file: str, value: str, unmade: Mapping[str, str]) -> str | None:
    controller = "" if leaf.layout == "v2" else file.split(".")[0]
    directory = leaf.dirs.get(controller)
    if directory is None:
        return unmade.get(controller, f"no {file.split('.')[0]} controller here")
    path = directory / file
    if file == "blkio.weight" and not path.exists():
        path = directory / "blkio.bfq.weight"
    if file == "io.bfq.weight" and not path.exists():
        return None  # BFQ is no disk's scheduler: io.weight alone
    try:
        path.write_text(value)
    except OSError as exc:
        return f"cannot write {value!r} to {path}: {exc.strerror}"
    return None


def _lines(path: Path) -> list[str]:
    """The file's lines; none when it cannot be read (it goes with its leaf)."""
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _keyed(path: Path) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.events, memory.oom_control)."""
    found: dict[str, int] = {}
    for line in _lines(path):
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _io_stat(path: Path) -> dict[str, int]:
    """io.stat: `8:0 rbytes=1 wbytes=2 …` per device, summed."""
    total: dict[str, int] = {}
    for line in _lines(path):
        for pair in line.split()[1:]:
            key, _, value = pair.partition("=")
            if value.isdigit():
                total[key] = total.get(key, 0) + int(value)
    return total


def _blkio_bytes(path: Path) -> dict[str, int]:
    """blkio's io_service_bytes: `8:0 Read 123` per device, summed by operation."""
    total: dict[str, int] = {}
    for line in _lines(path):
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            total[parts[1]] = total.get(parts[1], 0) + int(parts[2])
    return total
