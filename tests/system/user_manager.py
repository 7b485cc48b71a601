"""A real systemd user manager and journald, in a private mount namespace, for system tests.

The test process stays in the host namespace. `SystemdHarness.start` launches one helper,
`namespace_init.py`, through `unshare -m --propagation private`; it mounts a private /run,
starts journald and `systemd --user` in a cgroup of their own, and waits. Commands then run
inside the namespace through `nsenter`, holding a file descriptor on the namespace rather than
a pid (which could be reused). `close` makes the helper stop everything, then proves that no
process, mount or cgroup of the harness is left on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import namespace_init

T = TypeVar("T")
HELPER = Path(namespace_init.__file__).resolve()
WATCHED_MOUNTS = ("/run", "/sys/fs/cgroup", "/var/log")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 40.0  # the helper's own deadlines add up to 35s


class HarnessError(RuntimeError):
    """The harness cannot run here (missing tool, not root) or failed to start."""


class HarnessLeak(AssertionError):
    """Teardown left something of the harness on the host."""


class CommandFailed(AssertionError):
    """A command run with check=True failed; the message carries its output."""


@dataclass(frozen=True)
class HostSnapshot:
    """What the harness must leave exactly as it found it."""

    mounts: frozenset[tuple[str, str]]
    run_systemd_system: bool

    @classmethod
    def take(cls) -> HostSnapshot:
        """The host's mounts under WATCHED_MOUNTS, and whether /run/systemd/system exists."""
        mounts = frozenset(
            (point, fstype)
            for point, fstype, _options in namespace_init.mountinfo()
            if point.startswith(WATCHED_MOUNTS)
        )
        return cls(mounts, Path("/run/systemd/system").exists())


@dataclass
class SystemdHarness:
    """One running journald + user manager; see the module docstring."""

    helper: subprocess.Popen[bytes]
    workdir: Path
    cgroup: str
    host: HostSnapshot
    ns_fd: int = -1
    ns_id: tuple[int, int] = (0, 0)
    info: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, timeout: float = START_TIMEOUT) -> SystemdHarness:
        """Start a harness whose files live under `workdir`; HarnessError if it cannot."""
        preflight()
        cgroup = f"henbackup-harness-{uuid.uuid4().hex[:12]}.slice/user@0.service"
        host = HostSnapshot.take()
        harness = cls(launch(workdir, cgroup), workdir, cgroup, host)
        try:
            harness.info = harness._read_report(timeout)
            if not harness.info.get("ready"):
                raise HarnessError(f"harness failed to start: {harness.info.get('error')}")
            harness._hold_namespace()
        except BaseException as error:
            harness._abort(error)
            raise
        return harness

    def close(self) -> None:
        """Stop everything, then raise HarnessLeak unless the host is as it was. Idempotent."""
        if self.closed:
            return
        self.closed = True
        problems = self._stop_helper()
        problems += self._kill_strays()  # while ns_fd pins the namespace's identity
        if self.ns_fd >= 0:
            os.close(self.ns_fd)
        problems += self.leftovers()
        if problems:
            raise HarnessLeak("harness teardown: " + "; ".join(problems) + self._log_tail())

    def __enter__(self) -> SystemdHarness:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- running things inside ---------------------------------------------------------------

    @property
    def unit_dir(self) -> Path:
        """Where the user manager loads unit files from ($XDG_CONFIG_HOME/systemd/user)."""
        return self.workdir / "home" / "config" / "systemd" / "user"

    @property
    def env(self) -> dict[str, str]:
        """The environment commands run with: the manager's, plus no pager and no colour."""
        env = namespace_init.manager_env(self.workdir / "home")
        env.update(SYSTEMD_PAGER="", PAGER="cat", SYSTEMD_COLORS="0", TERM="dumb")
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace (cwd = workdir); CommandFailed if check and rc != 0."""
        if self.closed or self.helper.poll() is not None:
            raise HarnessError("the harness is not running" + self._log_tail())
        command = ["nsenter", f"--mount=/proc/self/fd/{self.ns_fd}", f"--wd={self.workdir}"]
        done = subprocess.run(
            [*command, "--", *argv],
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            pass_fds=(self.ns_fd,),
        )
        if check and done.returncode != 0:
            raise CommandFailed(
                f"{' '.join(argv)} exited {done.returncode}\n"
                f"stdout: {done.stdout.strip()}\nstderr: {done.stderr.strip()}"
            )
        return done

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`systemctl --user ARGS` inside the namespace."""
        return self.run(["systemctl", "--user", "--no-pager", *args], check=check)

    def install_unit(self, name: str, text: str) -> Path:
        """Write the user unit `name` and make the manager load it; returns its path."""
        path = self.unit_dir / name
        path.write_text(text)
        self.systemctl("daemon-reload")
        return path

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl --user show -p PROP... UNIT` as a dict (every property if none named)."""
        args = [arg for prop in props for arg in ("-p", prop)]
        lines = self.systemctl("show", *args, unit).stdout.splitlines()
        return dict(line.partition("=")[::2] for line in lines if "=" in line)

    def wait_show(self, unit: str, timeout: float = 10.0, **expected: str) -> dict[str, str]:
        """Poll `show` until every property equals `expected`; returns the last reading."""
        last: dict[str, str] = {}

        def matches() -> bool:
            last.update(self.show(unit, *expected))
            return all(last.get(k) == v for k, v in expected.items())

        self.wait_for(matches, timeout, lambda: f"{unit}: wanted {expected}, last saw {last}")
        return last

    def journal(
        self, match: Mapping[str, str], since_cursor: str | None = None
    ) -> list[dict[str, Any]]:
        """Journal entries with every FIELD=value of `match`, oldest first, as journalctl JSON."""
        argv = ["journalctl", "--no-pager", "--quiet", "--all", "-o", "json"]
        if since_cursor:
            argv.append(f"--after-cursor={since_cursor}")
        argv += [f"{key}={value}" for key, value in match.items()]
        done = self.run(argv, check=True)
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def wait_journal(
        self,
        match: Mapping[str, str],
        count: int = 1,
        timeout: float = 10.0,
        since_cursor: str | None = None,
    ) -> list[dict[str, Any]]:
        """Poll `journal` until it holds at least `count` entries; returns them all."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            found[:] = self.journal(match, since_cursor)
            return len(found) >= count

        self.wait_for(enough, timeout, lambda: f"{count} entries {dict(match)}, got {len(found)}")
        return found

    def cursor(self) -> str | None:
        """The cursor of the newest journal entry (None if empty): pass it as since_cursor."""
        done = self.run(["journalctl", "--no-pager", "--quiet", "-n", "1", "-o", "json"])
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1])["__CURSOR"] if lines else None

    @staticmethod
    def wait_for(
        predicate: Callable[[], T],
        timeout: float = 10.0,
        what: str | Callable[[], str] = "a condition",
        interval: float = 0.02,
    ) -> T:
        """Poll `predicate` until truthy and return its value; AssertionError at `timeout`."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                described = what() if callable(what) else what
                raise AssertionError(f"timed out after {timeout}s waiting for {described}")
            time.sleep(interval)
        return value

    # -- inspection -----------------------------------------------------------------------

    def host_cgroups(self) -> list[Path]:
        """The harness cgroup's directories in the host's tracking hierarchies."""
        return [mount / self.cgroup for mount in namespace_init.tracking_hierarchies()]

    def pids(self) -> set[int]:
        """Every process of the harness: journald, the manager and its services."""
        return namespace_init.cgroup_pids(self.host_cgroups())

    def leftovers(self) -> list[str]:
        """What of the harness is still on the host (empty once it is cleanly gone)."""
        problems = [f"cgroup {path} still exists" for path in self.host_cgroups() if path.exists()]
        now = HostSnapshot.take()
        if now.mounts != self.host.mounts:
            problems.append(f"host mounts changed: {sorted(now.mounts ^ self.host.mounts)}")
        if now.run_systemd_system != self.host.run_systemd_system:
            problems.append("the host's /run/systemd/system appeared or vanished")
        return problems

    # -- internals -------------------------------------------------------------------------

    def _read_report(self, timeout: float) -> dict[str, Any]:
        """The helper's next JSON line; HarnessError if none comes within `timeout`."""
        assert self.helper.stdout is not None
        fd = self.helper.stdout.fileno()
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise HarnessError(f"no word from the harness helper within {timeout}s")
            chunk = os.read(fd, 1)  # byte by byte: never swallow the next report
            if not chunk:
                raise HarnessError("the harness helper exited without a word")
            line += chunk
        return json.loads(line)

    def _hold_namespace(self) -> None:
        """Open the helper's mount namespace, after checking it is not the host's."""
        self.ns_fd = os.open(f"/proc/{self.helper.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        ns = os.fstat(self.ns_fd)
        self.ns_id = (ns.st_dev, ns.st_ino)
        own = os.stat("/proc/self/ns/mnt")
        if self.ns_id == (own.st_dev, own.st_ino):
            raise HarnessError("the helper is in the host's mount namespace")

    def _stop_helper(self) -> list[str]:
        """Ask the helper to tear down (close its stdin) and collect its verdict."""
        assert self.helper.stdin is not None
        self.helper.stdin.close()
        try:
            verdict = self._read_report(STOP_TIMEOUT)
            self.helper.wait(timeout=5)
        except (HarnessError, subprocess.TimeoutExpired, ValueError) as error:
            self._kill_helper()
            return [f"the helper did not stop cleanly ({error}); killed everything"]
        finally:
            if self.helper.stdout:
                self.helper.stdout.close()
        if not verdict.get("stopped"):  # (its exit status only says whether start worked)
            return [f"helper teardown failed: {verdict.get('error')}"]
        return []

    def _kill_helper(self) -> None:
        """Last resort from the host side: kill the helper and everything in its cgroup."""
        if self.helper.poll() is None:
            os.killpg(self.helper.pid, signal.SIGKILL)
            self.helper.wait(timeout=5)
        hosts = self.host_cgroups()
        namespace_init.kill_cgroup(hosts, 10)
        namespace_init.remove_cgroup([path.parent for path in hosts], 10)

    def _abort(self, error: BaseException) -> None:
        """Tear down after a failed start, adding what teardown found to `error`'s notes."""
        try:
            self.close()
        except HarnessLeak as leak:
            error.add_note(str(leak))  # with the log's tail
        else:
            error.add_note(self._log_tail())

    def _kill_strays(self) -> list[str]:
        """Kill what is still in the namespace: `run` commands left in the background."""
        strays = self._namespace_users()
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [f"processes {strays} were left in the namespace (killed)"] if strays else []

    def _namespace_users(self) -> list[int]:
        """Processes inside the harness's mount namespace."""
        if self.ns_fd < 0:
            return []
        users = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ns = (proc / "ns" / "mnt").stat()
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
            except PermissionError:
                continue  # e.g. this VM's PID 1 hides it; harness processes are root's own
            if (ns.st_dev, ns.st_ino) == self.ns_id:
                users.append(int(proc.name))
        return users

    def _log_tail(self, lines: int = 30) -> str:
        """The end of journald's and the manager's own output, for error messages."""
        log = self.workdir / "harness.log"
        if not log.exists() or not log.stat().st_size:
            return ""
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        return "\n--- harness.log (tail) ---\n" + "\n".join(tail)


def launch(workdir: Path, cgroup: str) -> subprocess.Popen[bytes]:
    """Start the namespace helper for a harness in `workdir` using the cgroup `cgroup`."""
    home = workdir / "home"
    (home / "config" / "systemd" / "user").mkdir(parents=True)
    log = workdir / "harness.log"
    argv = ["unshare", "-m", "--propagation", "private", sys.executable, str(HELPER)]
    argv += ["--cgroup", cgroup, "--home", str(home), "--log", str(log)]
    with log.open("ab") as stderr:  # one log for the helper, journald and the manager
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # a Ctrl-C is for pytest, which then tears down
        )


def preflight() -> None:
    """HarnessError naming what is missing, so a test fails clearly instead of skipping."""
    if os.geteuid() != 0:
        raise HarnessError("system tests need root (mount namespaces, cgroups)")
    missing = [
        tool
        for tool in ("unshare", "nsenter", "mount", "systemctl", "journalctl")
        if shutil.which(tool) is None
    ]
    for candidates in (namespace_init.JOURNALD, namespace_init.MANAGER):
        if not any(Path(path).exists() for path in candidates):
            missing.append(candidates[0])
    if missing:
        raise HarnessError(f"missing: {', '.join(missing)} (apt install systemd util-linux)")
