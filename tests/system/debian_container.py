"""A real Debian 12 booted with systemd as PID 1 (systemd-nspawn), for the package's test.

The base root (minbase, systemd, man-db and the .deb's dependencies) is built once by
mmdebstrap from the mirror in /etc/apt/sources.list.d/debian.sources (about a minute) and
cached in .cache/, keyed by what it holds. Each boot runs on a fresh copy of it, with only
a loopback network: apt installs the package from its file, offline. Commands run inside
through `nsenter -t <the container's PID 1> -a`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
# systemd as PID 1 and man to open the pages; the package's Depends are added (debian_depends).
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "man-db")
# Inside the container: Debian's PATH, not this runner's.
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}


class ContainerError(Exception):
    pass


def debian_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources")) -> str:
    """The URI of the stanza that serves bookworm itself."""
    for stanza in sources.read_text().split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
        )
        if "bookworm" in fields.get("Suites", "").split():
            return fields["URIs"].split()[0]
    raise ContainerError(f"{sources}: no stanza with Suites: bookworm")


def debian_depends(package: Path) -> tuple[str, ...]:
    """The names in the .deb's Depends (first of each alternative), for mmdebstrap."""
    field = subprocess.run(
        ["dpkg-deb", "--field", str(package), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    names = (re.split(r"[\s(:]", item.split("|")[0].strip())[0] for item in field.split(","))
    return tuple(sorted(set(names)))


def base_root(package: Path) -> Path:
    """The cached base root with the package's dependencies (not the package), built first
    if absent (into a temporary name, then renamed)."""
    packages = BASE_PACKAGES + debian_depends(package)
    mirror = debian_mirror()
    key = hashlib.sha256(repr((packages, mirror)).encode()).hexdigest()[:12]
    root = CACHE / f"debian-bookworm-{key}"
    if root.is_dir():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    built = subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}", "bookworm",
         str(partial), mirror],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    if built.returncode != 0:
        raise ContainerError(f"mmdebstrap: exit {built.returncode}\n{built.stderr[-3000:]}")
    partial.rename(root)
    return root


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ContainerError(f"after {timeout:g} s: {what() if callable(what) else what}")
        time.sleep(0.2)


class Container:
    """A booted copy of the base root under `workdir`."""

    def __init__(self, workdir: Path, package: Path) -> None:
        self.package = package
        self.root = workdir / "root"
        self.console = workdir / "console.txt"
        self.process: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def boot(self) -> Container:
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(base_root(self.package)), str(self.root)], check=True
        )
        with self.console.open("wb") as console:
            self.process = subprocess.Popen(
                ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network",
                 "-D", str(self.root), "-b", "--console=pipe"],
                stdin=subprocess.PIPE,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid1 = wait_for(
            self._find_pid1, 60, lambda: f"no PID 1 in the container\n{self.log()}"
        )
        # PID 1 may not be systemd yet (nspawn's child, before its exec): ask until it answers.
        wait_for(self._booted, 120, lambda: f"the container did not boot\n{self.log()}")
        return self

    def _booted(self) -> bool:
        state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=120)
        return state.stdout.strip() in ("running", "degraded")

    def _find_pid1(self) -> int:
        """The descendant of systemd-nspawn that is PID 1 in its own PID namespace."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited\n{self.log()}")
        for process in psutil.Process(self.process.pid).children(recursive=True):
            status = Path(f"/proc/{process.pid}/status").read_text(errors="replace")
            nspid = next((line.split()[1:] for line in status.splitlines() if "NSpid" in line), [])
            if len(nspid) > 1 and nspid[-1] == "1":
                return process.pid
        return 0

    def log(self) -> str:
        return self.console.read_text(errors="replace")[-4000:]

    def run(
        self,
        *argv: str,
        check: bool = True,
        user: str | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """A command inside (as root, or as `user` with that user's groups)."""
        if user is not None:
            argv = ("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv)
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "--", *argv],
            capture_output=True,
            text=True,
            env=ENV,
            input=input,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result

    def stop(self) -> None:
        """SIGTERM to systemd-nspawn powers the container off; killed after 60 s."""
        if self.process is None:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdin is not None
        self.process.stdin.close()
        shutil.rmtree(self.root, ignore_errors=True)
