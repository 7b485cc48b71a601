"""The inside of the system-test namespace: private /run, a journald, a systemd user manager.

`user_manager.SystemdHarness` runs this file (stdlib only, as root) through
`unshare -m --propagation private`, so every mount made here dies with the namespace.
Protocol on stdout: one JSON line once ready (or failed), one more after teardown.
Teardown starts when stdin reaches EOF (the test process closed it or died) or on SIGTERM.

Why a private cgroup: a user manager treats the cgroup it starts in as its own root and moves
*every* process found there into `init.scope`. Started from the host's root cgroup it
captured the whole machine (PID 1 included) and left `/init.scope` behind. So journald and the
manager start in a fresh `henbackup-harness-*.slice/user@0.service`, and on cgroup-v1/hybrid
hosts the namespace only sees the hierarchies systemd tracks processes with (name=systemd and
cgroup2): it then never touches the v1 controllers (memory, cpu, pids) of the test runner.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNTIME_DIR = Path("/run/user/0")
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
JOURNALD = ("/usr/lib/systemd/systemd-journald", "/lib/systemd/systemd-journald")
MANAGER = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")
PR_SET_CHILD_SUBREAPER = 36

# Deterministic journald whatever the host's journald.conf says: memory only (nothing reaches
# /var/log/journal), no rate limit (tests emit bursts of events), nothing forwarded or read
# from the host's kernel log. A drop-in under /run wins over /etc/systemd/journald.conf.
JOURNALD_CONF = """\
[Journal]
Storage=volatile
RateLimitIntervalSec=0
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
ReadKMsg=no
"""


class Stop(Exception):
    """SIGTERM arrived: abandon whatever is in progress and tear down."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Stop


def first_existing(candidates: Iterable[str]) -> str:
    """The first path that exists; FileNotFoundError names them all when none does."""
    for candidate in candidates:
        if Path(candidate).exists():
            return candidate
    raise FileNotFoundError(f"none of {', '.join(candidates)} exists (is systemd installed?)")


def mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of every mount this process sees."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype, _source, options = after.split(" ")[:3]
        mounts.append((before.split(" ")[4], fstype, options))
    return mounts


def tracking_hierarchies() -> list[Path]:
    """Mount points of the hierarchies systemd tracks processes with: cgroup2, name=systemd."""
    found: list[Path] = []
    for point, fstype, options in mountinfo():
        tracks = fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options)
        if tracks and Path(point) not in found:
            found.append(Path(point))
    return found


def hide_v1_controllers(hierarchies: list[Path]) -> None:
    """Cover /sys/fs/cgroup with a tmpfs holding only `hierarchies`, mounted afresh."""
    v1_controllers = [m for m in mountinfo() if m[1] == "cgroup" and "name=systemd" not in m[2]]
    if not v1_controllers or any(h.parent != CGROUP_ROOT for h in hierarchies):
        return  # pure cgroup v2, or a layout this does not know: leave it as it is
    mount("tmpfs", CGROUP_ROOT, "mode=755")
    for hierarchy in hierarchies:
        hierarchy.mkdir()
        if hierarchy.name == "systemd":
            mount("cgroup", hierarchy, "none,name=systemd")
        else:
            mount("cgroup2", hierarchy, "")


def mount(fstype: str, target: Path, options: str) -> None:
    """mount(8) a fresh `fstype` on `target`; CalledProcessError when it fails."""
    argv = ["mount", "-t", fstype, *(["-o", options] if options else []), fstype, str(target)]
    subprocess.run(argv, check=True, capture_output=True)


def private_run() -> None:
    """A tmpfs on /run with what journald and `systemd --user` expect to find there."""
    mount("tmpfs", Path("/run"), "mode=755")
    # `systemd --user` refuses to start unless /run/systemd/system exists (sd_booted()).
    for directory in ("systemd/system", "systemd/journal", "systemd/journald.conf.d", "log"):
        Path("/run", directory).mkdir(parents=True)
    Path("/run/lock").mkdir()
    Path("/run/lock").chmod(0o1777)  # as on the host; mkdir's mode would be cut by the umask
    RUNTIME_DIR.mkdir(parents=True, mode=0o700)
    Path("/run/systemd/journald.conf.d/zz-henbackup-harness.conf").write_text(JOURNALD_CONF)
    inaccessible_nodes(Path("/run/systemd/inaccessible"))


def inaccessible_nodes(where: Path) -> None:
    """What PID 1 creates at boot and sandboxing (InaccessiblePaths=, ProtectKernelLogs=...)
    mounts over what a service must not see: one node of each type, mode 0000."""
    where.mkdir()
    (where / "dir").mkdir(mode=0)
    (where / "reg").touch(mode=0)
    os.mkfifo(where / "fifo", 0)
    os.mknod(where / "chr", 0o000 | stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(where / "blk", 0o000 | stat.S_IFBLK, os.makedev(0, 0))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(where / "sock"))
    for node in where.iterdir():
        node.chmod(0)


def join_cgroup(cgroups: list[Path]) -> Callable[[], None]:
    """A preexec_fn that moves the new child into `cgroups` before it executes anything."""

    def join() -> None:
        for cgroup in cgroups:
            (cgroup / "cgroup.procs").write_text("0")

    return join


def spawn(argv: list[str], cgroups: list[Path], env: dict[str, str], log: Path) -> int:
    """Start `argv` inside the harness cgroup, output to `log`; returns its pid."""
    with log.open("ab") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            preexec_fn=join_cgroup(cgroups),  # safe: this helper never starts a thread
        )
    return child.pid


def reap() -> None:
    """Collect every exited child (including orphans handed to us as subreaper)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def gone(pid: int) -> bool:
    """True once `pid` has exited and been reaped."""
    reap()
    return not Path(f"/proc/{pid}").exists()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def wait_socket(path: Path, pid: int, timeout: float) -> None:
    """Wait for `pid` to create the socket `path`; RuntimeError if it dies first."""

    def ready() -> bool:
        if gone(pid):
            raise RuntimeError(f"pid {pid} exited before creating {path}: see the harness log")
        return path.is_socket()

    wait_until(ready, timeout, str(path))


def cgroup_pids(roots: Iterable[Path]) -> set[int]:
    """Every process in the cgroup trees under `roots`."""
    pids: set[int] = set()
    for root in roots:
        for directory, _dirs, _files in os.walk(root):
            try:
                pids.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
            except FileNotFoundError:
                continue  # removed while walking
    return pids


def kill_cgroup(roots: list[Path], timeout: float, spare: frozenset[int] = frozenset()) -> None:
    """SIGKILL every process in `roots` but `spare`, until only `spare` remains."""

    def empty() -> bool:
        for pid in cgroup_pids(roots) - spare:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, signal.SIGKILL)
        reap()
        return not cgroup_pids(roots) - spare

    wait_until(empty, timeout, f"the processes in {roots[0]} to die")


def remove_cgroup(roots: list[Path], timeout: float) -> None:
    """rmdir the cgroup trees `roots`, deepest first; retried while the kernel says busy."""

    def removed() -> bool:
        for root in roots:
            for directory, _dirs, _files in os.walk(root, topdown=False):
                try:
                    os.rmdir(directory)
                except OSError as error:
                    if error.errno not in (errno.EBUSY, errno.ENOENT):
                        raise
        return not any(root.exists() for root in roots)

    wait_until(removed, timeout, f"{roots[0]} to be removable")


def manager_env(home: Path) -> dict[str, str]:
    """The manager's environment, which a user manager also hands to every service.

    Minimal and deterministic: nothing of the test runner's (NOTIFY_SOCKET, CI, ...) leaks in,
    and all of the manager's own state lives under `home`.
    """
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(RUNTIME_DIR),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={RUNTIME_DIR}/bus",
    }


def start(cgroups: list[Path], home: Path, log: Path) -> dict[str, int]:
    """Start journald, then the user manager, and wait until the manager finished starting."""
    env = manager_env(home)
    journald = spawn([first_existing(JOURNALD)], cgroups, {"PATH": env["PATH"]}, log)
    wait_socket(JOURNAL_SOCKET, journald, timeout=10)
    manager = spawn([first_existing(MANAGER), "--user", "--log-target=journal"], cgroups, env, log)
    wait_socket(RUNTIME_DIR / "systemd/private", manager, timeout=10)
    # The private socket appears before default.target is reached: wait for the boot to end.
    subprocess.run(
        ["systemctl", "--user", "is-system-running", "--wait"],
        env=env,
        capture_output=True,
        timeout=20,
    )
    return {"journald_pid": journald, "manager_pid": manager}


def terminate(pid: int, timeout: float, what: str) -> None:
    """SIGTERM `pid` and wait for it; past `timeout` say so (the cgroup sweep kills it)."""
    if gone(pid):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: gone(pid), timeout, what)
    except TimeoutError as error:
        print(f"{error}: killing it", file=sys.stderr)


def stop(cgroups: list[Path]) -> None:
    """Stop the manager (its services first), then journald, then whatever is left; rmdir."""
    daemons = {program(pid): pid for pid in cgroup_pids(cgroups)}
    if "systemd" in daemons:
        # A user manager answers SIGTERM by starting exit.target: every unit is stopped.
        terminate(daemons["systemd"], 10, "the user manager to exit")
    # journald goes last so that the journal of the whole stop is complete.
    journald = daemons.get("systemd-journald")
    kill_cgroup(cgroups, 10, spare=frozenset({journald} if journald else ()))
    if journald:
        terminate(journald, 5, "journald to exit")
    kill_cgroup(cgroups, 10)
    remove_cgroup([cgroup.parent for cgroup in cgroups], 10)


def program(pid: int) -> str:
    """The file name of the program `pid` runs ("" once it is gone)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return ""


def report(message: dict[str, object]) -> None:
    """One JSON line for the test process."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def harness_cgroup(value: str) -> str:
    """`value` if it names a harness cgroup: teardown removes its parent, so never a host one."""
    if not re.fullmatch(r"henbackup-harness-[0-9a-z]+\.slice/user@0\.service", value):
        raise argparse.ArgumentTypeError(f"not a harness cgroup: {value!r}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    """--cgroup NAME.slice/user@0.service --home DIR --log FILE."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cgroup", required=True, type=harness_cgroup, help="harness cgroup")
    parser.add_argument("--home", required=True, type=Path, help="the manager's state")
    parser.add_argument("--log", required=True, type=Path, help="journald's and systemd's output")
    return parser.parse_args(argv)


def set_up(
    hierarchies: list[Path], cgroups: list[Path], args: argparse.Namespace
) -> dict[str, int]:
    """Make the cgroup, the private mounts, and start the daemons; returns their pids."""
    if not hierarchies:
        raise RuntimeError("no cgroup2 nor name=systemd hierarchy is mounted")
    for cgroup in cgroups:
        cgroup.mkdir(parents=True)
    hide_v1_controllers(hierarchies)
    private_run()
    return start(cgroups, args.home, args.log)


def serve(hierarchies: list[Path], cgroups: list[Path], args: argparse.Namespace) -> int:
    """Set up, report, wait for stdin to close (or SIGTERM); returns the exit status."""
    ready = False
    try:
        pids = set_up(hierarchies, cgroups, args)
        # SIGTERM held back until `ready` says whether the ready line went out.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        report({"ready": True, "cgroup_mounts": [str(h) for h in hierarchies], **pids})
        ready = True
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        sys.stdin.buffer.read()
    except Stop:
        if not ready:
            report({"ready": False, "error": "SIGTERM while starting"})
    except Exception as error:
        report({"ready": False, "error": f"{type(error).__name__}: {error}"})
        return 1
    return 0


def tear_down(cgroups: list[Path]) -> int:
    """Stop everything in the harness cgroup and report it; returns the exit status."""
    try:
        stop(cgroups)
    except Exception as error:
        report({"stopped": False, "error": f"{type(error).__name__}: {error}"})
        return 1
    report({"stopped": True})
    return 0


def main(argv: list[str]) -> int:
    """Serve until told to stop, then tear down; exit 1 if anything failed."""
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the test process decides when to stop
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Orphans of the manager's services are re-parented here, so they are reaped here.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    hierarchies = tracking_hierarchies()
    cgroups = [hierarchy / args.cgroup for hierarchy in hierarchies]
    status = serve(hierarchies, cgroups, args)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut teardown
    return tear_down(cgroups) or status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
