"""Run `henbackup run` as a subprocess and read its events as they come.

The daemon runs with HENBACKUP_EVENTS=stderr: every process of it (master, workers, job
processes) writes one JSON object per line to the one stderr pipe. `Daemon` reads that pipe
with select() and a deadline, so tests wait for what they expect (an event, a status) and
never sleep a fixed time to synchronise. `stop()` (also on leaving the `with` block) sends
SIGTERM, waits, and only then kills what is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from henbackup.cli.ctl import Unreachable, request
from henbackup.config.load import load_config

Event = dict[str, Any]

# Variables of the test's own environment that would make the daemon talk to a systemd or a
# configuration that is not the test's.
_FOREIGN = (
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "HENBACKUP_CONFIG",
    "HENBACKUP_SOCKET",
    "CREDENTIALS_DIRECTORY",
)


def when(event: Event) -> float:
    """The wall-clock time (epoch seconds) at which the daemon emitted `event`."""
    return int(event["__REALTIME_TIMESTAMP"]) / 1e6


def matches(event: Event, kind: str | None = None, **fields: str) -> bool:
    """Whether `event` is of `kind` and has every HENBACKUP_<NAME>=value in `fields`
    (`backup="pictures"` checks HENBACKUP_BACKUP)."""
    if kind is not None and event.get("HENBACKUP_EVENT") != kind:
        return False
    return all(event.get(f"HENBACKUP_{name.upper()}") == value for name, value in fields.items())


def describe(events: Iterable[Event]) -> str:
    """One line per event, for assertion messages."""
    lines = []
    for event in events:
        stamp = time.strftime("%H:%M:%S", time.localtime(when(event)))
        fraction = f"{when(event) % 1:.3f}"[1:]
        lines.append(f"  {stamp}{fraction} {event.get('HENBACKUP_EVENT')}: {event.get('MESSAGE')}")
    return "\n".join(lines) or "  (no events)"


class Daemon:
    """One `henbackup --config CONFIG run` with its directories under `base`."""

    def __init__(self, config: Path, base: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.runtime, self.state, self.cache = base / "run", base / "state", base / "cache"
        for directory in (self.runtime, self.state, self.cache):
            directory.mkdir(parents=True, exist_ok=True)
        self.socket = self.runtime / "control.sock"
        self.env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
        self.env.update(
            HENBACKUP_EVENTS="stderr",
            RUNTIME_DIRECTORY=str(self.runtime),
            STATE_DIRECTORY=str(self.state),
            CACHE_DIRECTORY=str(self.cache),
            **(env or {}),
        )
        self.stdout_path = base / f"daemon-stdout-{time.monotonic_ns()}.txt"
        self.process: subprocess.Popen[bytes] | None = None
        self.events: list[Event] = []
        self.noise: list[str] = []  # stderr lines that are not events (tracebacks...)
        self._partial = b""
        self.eof = False
        self.leftovers: list[str] = []  # descendants still alive once the master exited

    # lifecycle
    def start(self) -> Daemon:
        # A second master would be left running (and holding the socket) by stop().
        assert self.process is None or self.process.poll() is not None, "already started"
        with self.stdout_path.open("wb") as stdout:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "henbackup.cli.daemon", "--config", str(self.config), "run"],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=self.env,
                start_new_session=True,  # a Ctrl-C of pytest reaches it only through stop()
            )
        assert self.process.stderr is not None
        os.set_blocking(self.process.stderr.fileno(), False)
        self.events, self.noise, self._partial, self.eof = [], [], b"", False
        return self

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, read every event until the pipe closes, wait; kill what is left after
        `timeout`. Returns the exit code (None if it was not running)."""
        process = self.process
        if process is None:
            return None
        descendants = self._descendants()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.pump(deadline - time.monotonic())
        try:
            code = process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            descendants = self._descendants() or descendants
            process.kill()
            code = process.wait()
        # The master reaps its children before it exits: anything still alive is a leak.
        _, alive = psutil.wait_procs(descendants, timeout=2)
        self.leftovers = [f"{p.pid} {_name(p)}" for p in alive]
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        assert process.stderr is not None
        process.stderr.close()
        self.process = None
        return code

    def _descendants(self) -> list[psutil.Process]:
        assert self.process is not None
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []

    def named(self, comm: str) -> list[psutil.Process]:
        """The daemon's descendants called `comm` now (one that ends meanwhile, a restic or
        a job process, is skipped: asked its name, it raised NoSuchProcess)."""
        found = []
        for process in self._descendants():
            with contextlib.suppress(psutil.Error):
                if process.name() == comm:
                    found.append(process)
        return found

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    # reading events
    def pump(self, timeout: float) -> None:
        """Read what stderr has within `timeout` seconds (returns at the first data)."""
        assert self.process is not None and self.process.stderr is not None
        if self.eof:
            time.sleep(max(timeout, 0))  # nothing more will come; honour the caller's wait
            return
        fd = self.process.stderr.fileno()
        readable, _, _ = select.select([fd], [], [], max(timeout, 0))
        if not readable:
            return
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self.eof = True
                if self._partial:
                    self._line(self._partial)
                    self._partial = b""
                return
            *lines, self._partial = (self._partial + data).split(b"\n")
            for line in lines:
                self._line(line)

    def _line(self, line: bytes) -> None:
        text = line.decode(errors="replace")
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if isinstance(event, dict) and "HENBACKUP_EVENT" in event:
            self.events.append(event)
        elif text.strip():
            self.noise.append(text)

    def pump_until(self, condition: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
        """Read events until `condition()` or `timeout`; returns condition(). `step` bounds
        each wait for output, so a condition on something else (a file, a status) is
        re-checked at least that often."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                return condition()
            self.pump(min(left, step))
        return True

    def collect(self, seconds: float) -> None:
        """Read every event of the next `seconds` (to assert that nothing happens)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.pump(left)

    def find(self, kind: str | None = None, since: int = 0, **fields: str) -> list[Event]:
        """The events so far (from index `since`) of `kind` with these fields."""
        return [e for e in self.events[since:] if matches(e, kind, **fields)]

    def wait_for(self, kind: str, timeout: float = 30.0, since: int = 0, **fields: str) -> Event:
        """The first event (from index `since`) of `kind` with these fields, read as it comes;
        raises AssertionError at the deadline or when the daemon ends first."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(kind, since, **fields)
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                wanted = ", ".join([kind, *(f"{k}={v}" for k, v in fields.items())])
                ended = "the daemon ended" if self.eof else f"nothing within {timeout} s"
                raise AssertionError(f"no event {wanted}: {ended}\n{self.report()}")
            self.pump(left)

    def report(self) -> str:
        """Everything the daemon said, for an assertion message."""
        text = describe(self.events)
        if self.noise:
            text += "\nother output on stderr:\n" + "\n".join(self.noise[-40:])
        return text

    # the control socket
    def status(self) -> dict[str, Any]:
        """The reply to `henbackupctl status` (raises Unreachable)."""
        reply, _ = request(str(self.socket), {"command": "status"})
        return reply

    def worker(self, name: str, kind: str = "backup") -> dict[str, Any] | None:
        """The status entry of one backup (or repository), with its worker's state as
        "state" and whether a run is in progress as "job"; None when the daemon does not
        answer yet."""
        try:
            reply = self.status()
        except Unreachable:
            return None
        entries = reply["backups" if kind == "backup" else "repositories"]
        entry = next((e for e in entries if e["name"] == name), None)
        return None if entry is None else {**entry, "state": entry["worker"], "job": entry["run"]}

    def wait_worker(
        self,
        name: str,
        condition: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,
        kind: str = "backup",
    ) -> dict[str, Any]:
        """Poll the status (while reading events) until the worker's entry meets
        `condition`; returns that entry or raises AssertionError."""
        entry: dict[str, Any] | None = None

        def met() -> bool:
            nonlocal entry
            entry = self.worker(name, kind)
            return entry is not None and condition(entry)

        if not self.pump_until(met, timeout, step=0.05):
            raise AssertionError(f"worker {name}: last status {entry}\n{self.report()}")
        assert entry is not None
        return entry

    def wait_triggers_armed(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the worker of backup `name` has started its triggers (its schedule is
        armed: it reports its next run) and, if it is watched, until the watcher watches
        each of its paths that exists."""
        entry = self.wait_worker(
            name, lambda w: w["state"] == "running" and w["next_run"] is not None, timeout
        )
        backup = load_config(self.config, env=self.env, deferred=[]).backups[name]
        if backup.watch is not None:
            inodes = {os.stat(p).st_ino for p in backup.paths if os.path.exists(p)}
            watching = lambda: inodes <= self.watched_inodes()  # noqa: E731
            assert self.pump_until(watching, timeout), f"{name}'s paths are not watched"
        return entry

    def watched_inodes(self) -> set[int]:
        """The inodes the daemon's watcher (`hbwatch`) has inotify watches on, read from
        the kernel (/proc/PID/fdinfo)."""
        inodes: set[int] = set()
        for process in self._descendants():
            if _name(process) != "hbwatch":
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{process.pid}/fdinfo"):
                    with contextlib.suppress(OSError):
                        info = Path(f"/proc/{process.pid}/fdinfo/{fd}").read_text()
                        inodes.update(_inotify_inodes(info))
        return inodes


def _inotify_inodes(fdinfo: str) -> Iterable[int]:
    """The inodes of the watches in an inotify fd's fdinfo ("inotify wd:1 ino:2a ...")."""
    for line in fdinfo.splitlines():
        if line.startswith("inotify wd:"):
            yield int(line.split(" ino:")[1].split()[0], 16)


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return "?"


def write_state(
    state_dir: Path, backup: str, last_success: float | None, last_attempt: float | None = None
) -> Path:
    """Write a backup's run record as the worker keeps it (henbackup/worker/state.py)."""
    path = state_dir / "backups" / f"{backup}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    attempt = last_success if last_attempt is None else last_attempt
    path.write_text(json.dumps({"last_success": last_success, "last_attempt": attempt}) + "\n")
    return path


def read_state(state_dir: Path, backup: str) -> dict[str, Any]:
    return json.loads((state_dir / "backups" / f"{backup}.json").read_text())


# --- restic, as the tests use it beside the daemon ----------------------------------------

PASSWORD = "integration: a test password"  # of the `repository` fixture's repositories


def restic_command(restic: str, repository: Path, *args: str) -> subprocess.CompletedProcess:
    """Run restic itself on `repository` (password PASSWORD); raises if it fails."""
    env = {**os.environ, "RESTIC_REPOSITORY": str(repository), "RESTIC_PASSWORD": PASSWORD}
    return subprocess.run(
        [restic, "--no-cache", *args], env=env, capture_output=True, check=True, timeout=120
    )


def restic_json(restic: str, repository: Path, *args: str) -> Any:
    return json.loads(restic_command(restic, repository, *args, "--json").stdout)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def locks(restic: str, repository: Path) -> list[str]:
    """The ids of the lock files in the repository (without taking one)."""
    return restic_command(restic, repository, "list", "locks", "--no-lock").stdout.split()


def make_data(directory: Path, big: int = 0) -> Path:
    """A small tree to back up; with `big`, also that many random bytes in big.bin."""
    (directory / "album").mkdir(parents=True)
    (directory / "notes.txt").write_text(f"the notes of {directory.name}\n")
    (directory / "album" / "cat.jpg").write_bytes(os.urandom(30_000))
    if big:
        (directory / "big.bin").write_bytes(os.urandom(big))
    return directory


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The client's stdout; asserts it exited 0."""
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}{result.stdout}"
    return result.stdout


def henbackupctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real client against the daemon's socket."""
    command = [sys.executable, "-m", "henbackup.cli.ctl", "--socket", str(daemon.socket)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)
