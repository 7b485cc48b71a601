"""Running a backup tool under a job's rules, whatever the tool: the engines' shared half.

`ToolEngine` starts the tool with the job's limits (on_spawn), in its own session with
signals blocked until it is under watch, follows one of its output streams line by line
while the other goes to a temporary file, calls the checkpoint at least every WATCH_TICK,
ends a run that made no progress for the stall timeout, and interrupts the tool cleanly
(its interrupt signal, then SIGKILL after a grace) when anything is raised: a cancel, a
stop, a stall.
An engine module (restic.py, borg.py) says what is the tool's own: its name, which of its
lines show progress, what it has sent, what it is doing while idle, and how its locks are
cleaned up after an interrupt. The pure helpers here (a target's secrets, the files a
restore wrote, the cap on warnings, a JSON line and the numbers in it) are every engine's
alike.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import selectors
import signal
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import subprocess

from henbackup.config.model import STALL_TIMEOUT, PasswordSource
from henbackup.config.units import format_duration
from henbackup.engine.base import (
    Checkpoint,
    Engine,
    SpawnCallback,
    StallCallback,
    Target,
    plain_include,
)
from henbackup.engine.sidecar import MAX_LINE_BYTES, Sidecar
from henbackup.engine.stall import StallWatch, idle_reason, read_io, read_state
from henbackup.engine.transfer import Upload
from henbackup.errors import AccessRefused, EngineError, RepositoryLocked, Stalled
from henbackup.process import spawn, stop_program

# How long the tool may take to clean up (remove its lock) after SIGINT before SIGKILL: well
# under a second with a working backend; a hanging one would hold a cancel for ever.
INTERRUPT_GRACE = 5.0
# After SIGKILL, how long to wait for the exit (a process blocked in the kernel may not die).
KILL_WAIT = 5.0
# How often a running tool's progress is looked at (at least).
WATCH_TICK = 1.0
# Pauses between attempts on a locked repository (ToolRunner._while_locked).
LOCK_BACKOFF_FIRST = 1.0
LOCK_BACKOFF_MAX = 30.0
# What one read of the tool's stream takes at most: the tool itself leaves at most a pipe's
# buffer unread when it exits, a child of it that writes on forever must not hold the job.
MAX_READ = 4 << 20
# Only so much of a huge stderr (e.g. millions of unreadable files) is read back.
STDERR_HEAD = STDERR_TAIL = 512 * 1024
MAX_RESULT = 256 << 20  # a --json result read whole (read_whole)
# A pipe holds 64 KiB: a bigger literal password would block the writer.
MAX_PASSWORD_BYTES = 60 * 1024
MAX_WARNINGS = 50
T = TypeVar("T")

LineHandler = Callable[[str], None]


@dataclass(frozen=True)
class ToolResult:
    """One finished run of the tool."""

    returncode: int
    stdout: tuple[str, ...]  # the followed stream's lines; empty when they went to a handler
    messages: tuple[str, ...]  # the other stream as redacted human lines
    seconds: float


def password_pipe(source: PasswordSource) -> int | None:
    """The read end of a pipe holding a literal password (closed write end), else None."""
    if source.kind != "password":
        return None
    return secret_pipe(source.value.encode())


def secret_pipe(data: bytes) -> int:
    """The read end of a pipe holding `data` (its write end closed)."""
    if len(data) > MAX_PASSWORD_BYTES:
        raise EngineError("the repository password is too long (over 60 KiB)")
    read_fd, write_fd = os.pipe()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    finally:
        os.close(write_fd)
    return read_fd


def read_whole(file: IO[bytes], tool: str, limit: int = MAX_RESULT) -> str:
    """A temporary output file's text, all of it: a tool's --json result (a list of
    thousands of archives is more than read_back keeps). Raises EngineError past `limit`."""
    fd = file.fileno()
    size = os.fstat(fd).st_size
    if size > limit:
        raise EngineError(f"{tool} printed a result over {limit >> 20} MiB long")
    return os.pread(fd, size, 0).decode(errors="replace")


def read_back(file: IO[bytes]) -> str:
    """A temporary output file's text: all of it, or its head and tail when huge.

    Read without moving the file offset: a running tool writes at it.
    """
    fd = file.fileno()
    size = os.fstat(fd).st_size
    if size <= STDERR_HEAD + STDERR_TAIL:
        return os.pread(fd, size, 0).decode(errors="replace")
    head, tail = os.pread(fd, STDERR_HEAD, 0), os.pread(fd, STDERR_TAIL, size - STDERR_TAIL)
    # Whole lines only: a cut inside a secret would leave a part no redaction recognises.
    head = head[: head.rfind(b"\n") + 1]
    tail = tail[tail.find(b"\n") + 1 :] if b"\n" in tail else b""
    return (head + tail).decode(errors="replace")


# --- what every engine reads and counts alike (pure) -----------------------------------


def secrets_of(target: Target) -> tuple[str, ...]:
    """Strings that must not appear in a message, longest first."""
    found = {target.location, target.location.rstrip("/")}
    scheme = re.match(r"^[a-z0-9]+:(?=.)", target.location)
    if scheme:  # a tool often prints the URL without its backend prefix
        found.add(target.location[scheme.end() :].rstrip("/"))
    userinfo = re.search(r"//([^/@\s]+)@", target.location)
    if userinfo:
        found.add(userinfo[1])
        found.add(userinfo[1].partition(":")[2])
    if target.password.kind == "password":
        found.add(target.password.value)
    found.update(value for _, value in target.env if len(value) >= 8)
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def limit_warnings(messages: Sequence[str]) -> tuple[str, ...]:
    """At most MAX_WARNINGS lines, then one that says how many more there were."""
    if len(messages) <= MAX_WARNINGS:
        return tuple(messages)
    return (*messages[:MAX_WARNINGS], f"... and {len(messages) - MAX_WARNINGS} more warnings")


def parse_json_line(line: str) -> dict[str, Any] | None:
    """A JSON object on one line, or None for anything else (text, a list, garbage)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can go
        return None
    return value if isinstance(value, dict) else None


def finite(message: Mapping[str, Any], key: str) -> float | None:
    """The number at `key`, or None: JSON may hold a string, true, NaN or 1e400 there."""
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float's range
        return None
    return number if math.isfinite(number) else None


def restored_roots(snapshot_paths: Sequence[str], includes: Sequence[str]) -> tuple[str, ...]:
    """What a restore wrote: the plain include paths, else the whole snapshot."""
    if includes and all(plain_include(path) for path in includes):
        return tuple(includes)
    return tuple(snapshot_paths)


def count_files(destination: str, roots: Sequence[str]) -> tuple[int, int]:
    """Regular files and their bytes under destination/<root> (engines keep full paths).

    Never outside the destination: a root restored as a link (or below one) may point
    anywhere on the host; a link above it on the host (merged /usr: /bin) is followed, for
    an in-place restore. What vanishes meanwhile is not counted.
    """
    base = os.path.realpath(destination)
    files = size = 0
    for root in dict.fromkeys(roots):
        top = os.path.join(base, root.lstrip("/"))
        if os.path.islink(top) or os.path.commonpath((base, os.path.realpath(top))) != base:
            continue  # a link, or below one that leads out: not what was restored as files
        with contextlib.suppress(OSError):
            st = os.lstat(top)
            if stat.S_ISREG(st.st_mode):
                files, size = files + 1, size + st.st_size
                continue
        for folder, _, names in os.walk(top):
            for name in names:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(folder, name))
                    if stat.S_ISREG(st.st_mode):
                        files, size = files + 1, size + st.st_size
    return files, size


# --- running a tool -------------------------------------------------------------------


class ToolRun:
    """One running tool: its followed stream's lines, its exit (a pidfd), the bytes it moved;
    and the lines of a sidecar beside it, handed on as they come."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        stream: IO[bytes],
        other: IO[bytes],
        sidecar: Sidecar | None = None,
        tool: str = "the tool",
    ) -> None:
        self.process, self.other, self.tool = process, other, tool
        self.stdout = stream.fileno()
        os.set_blocking(self.stdout, False)
        self.pidfd = os.pidfd_open(process.pid)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.pidfd, selectors.EVENT_READ)
        self.selector.register(self.stdout, selectors.EVENT_READ)
        self.sidecar = sidecar if sidecar is not None and not sidecar.ended else None
        if self.sidecar is not None:
            self.selector.register(self.sidecar.fd, selectors.EVENT_READ)
        self.reading = True  # until the end of the stream
        self.exited = False
        self.output = 0  # bytes read from the stream
        self._partial = [b""]  # the line being read, in pieces
        self._partial_bytes = 0
        self.other_seen = 0  # bytes of the other stream already passed on by new_other_text

    def read(self, timeout: float) -> list[str]:
        """The lines the tool printed within `timeout`; once it exited, all the rest."""
        ready = {key.fd for key, _ in self.selector.select(timeout)}
        self.exited = self.exited or self.pidfd in ready
        if self.sidecar is not None and self.sidecar.fd in ready:
            self._pump_sidecar()
        if ready:
            self._partial.append(self._available())
            self._partial_bytes += len(self._partial[-1])
        if not self.exited and b"\n" not in self._partial[-1]:
            if self._partial_bytes > MAX_LINE_BYTES:  # it would grow without bound
                raise EngineError(
                    f"{self.tool} printed a line over {MAX_LINE_BYTES >> 20} MiB long"
                )
            return []  # a long line (snapshots) comes in many reads: joined once, at its end
        *lines, last = b"".join(self._partial).split(b"\n")
        self._partial, self._partial_bytes = [last], len(last)
        if self.exited and last:  # its last line, without a newline
            lines.append(last)
            self._partial, self._partial_bytes = [b""], 0
        return [line.decode(errors="replace").rstrip("\r") for line in lines]

    def _pump_sidecar(self) -> None:
        assert self.sidecar is not None
        self.sidecar.pump()
        if self.sidecar.ended:  # its fd is closed
            self.selector.unregister(self.sidecar.fd)
            self.sidecar = None

    def _available(self) -> bytes:
        """What the stream holds now, up to MAX_READ (a child of the tool may keep it open
        after it exits, and write on forever: what is past that is not read)."""
        chunks = []
        taken = 0
        while self.reading and taken < MAX_READ:
            try:
                chunk = os.read(self.stdout, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.selector.unregister(self.stdout)
                self.reading = False
            self.output += len(chunk)
            taken += len(chunk)
            chunks.append(chunk)
        return b"".join(chunks)

    def look(self) -> tuple[int | None, int | None]:
        """One look at /proc: the bytes the tool read and wrote, and those it wrote, each
        less its output to us (the stream read, the other file); (None, None) if unknown."""
        counters = read_io(self.process.pid)
        if counters is None:
            return None, None
        output = self.output + os.fstat(self.other.fileno()).st_size
        return counters.moved - output, counters.wchar - output

    def new_other_text(self) -> str:
        """The other stream's whole lines since the last call (of its last STDERR_TAIL bytes)."""
        fd = self.other.fileno()
        size = os.fstat(fd).st_size
        start = max(self.other_seen, size - STDERR_TAIL)
        data = os.pread(fd, size - start, start)
        whole = data.rfind(b"\n") + 1
        self.other_seen = start + whole
        return data[:whole].decode(errors="replace")

    def discard_until(self, deadline: float) -> bool:
        """Read and drop its output (the tool must never block writing) until it exits or
        `deadline`; returns whether it exited."""
        while not self.exited and (left := deadline - time.monotonic()) > 0:
            self.read(left)
        return self.exited

    def close(self) -> None:
        self.selector.close()
        os.close(self.pidfd)


def end_program(
    process: subprocess.Popen[bytes],
    run: ToolRun | None,
    grace: float,
    interrupt: signal.Signals = signal.SIGINT,
) -> None:
    """`interrupt` (the tool removes its lock) and SIGCONT (a stopped tool can act on it),
    then SIGKILL after `grace` seconds. Reaps it if it dies within KILL_WAIT after that: one
    blocked in the kernel (a hung NFS read) may not, and must not hang us too."""

    def wait_until(deadline: float) -> None:
        if run is not None:
            run.discard_until(deadline)
        else:
            process.wait(max(0.0, deadline - time.monotonic()))

    stop_program(process, (interrupt, signal.SIGCONT), grace, wait_until, reap_within=KILL_WAIT)


class ToolEngine(Engine):
    """An Engine that runs a tool in the job process. Subclasses say what is the tool's
    (see the module docstring); `_launch` runs it once."""

    tool = "the tool"  # its name in messages
    interrupt = signal.SIGINT  # what makes it stop at once, cleanly (its lock removed)

    def __init__(
        self,
        binary: str,
        on_spawn: SpawnCallback | None = None,
        checkpoint: Checkpoint | None = None,
        stall_timeout: float = STALL_TIMEOUT,
        on_stall: StallCallback | None = None,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.binary = binary
        self.on_spawn = on_spawn
        self.checkpoint = checkpoint or (lambda: None)
        self.stall_timeout = stall_timeout  # the tool is ended after this long without progress
        self.on_stall = on_stall
        self.paused = paused  # the tool is paused on purpose (preemption): no stall meanwhile
        self.upload: Upload | None = None  # of the running tool, as last measured

    # -- what the tool's engine says --

    def _counters(self, line: str) -> object | None:
        """The progress counters of a followed line (they move with progress), if any."""
        return None

    def _measure(self, run: ToolRun, written: int) -> Upload | None:
        """What the running tool has sent, given what it wrote; None if unknown."""
        return None

    def _refused(self, run: ToolRun, target: Target) -> AccessRefused | None:
        """While it runs: AccessRefused if the tool keeps retrying a refused login."""
        return None

    def _explain_idle(self, run: ToolRun, target: Target) -> str | None:
        """What the tool's own words say it is doing while it makes no progress."""
        return None

    def _cleanup(self, target: Target) -> None:
        """After an interrupt: remove what the tool may have left (its stale lock)."""

    def _read_other(self, file: IO[bytes]) -> str:
        """The other stream's text: its head and tail when huge (messages)."""
        return read_back(file)

    def _messages(self, text: str, target: Target) -> list[str]:
        """The other stream's text as redacted human lines."""
        return text.splitlines()

    # -- running it --

    def _launch(
        self,
        argv: tuple[str, ...],
        env: Mapping[str, str],
        target: Target,
        on_line: LineHandler | None,
        *,
        password_fd: int | None = None,
        limit: float | None = None,
        follow_stderr: bool = False,
        cwd: str | None = None,
        sidecar: Sidecar | None = None,
    ) -> ToolResult:
        """Run the tool once: one stream (stdout, else stderr) line by line, the other into a
        temporary file, in the working directory `cwd` (None: ours). Closes `password_fd`
        (ours) once the tool has it. A `sidecar`'s lines are read in the same loop (its
        caller stops it).

        `limit` is for a run that holds no lock (an unlock after an interrupt): after that
        many seconds it is killed and EngineError raised; a stop or a cancel meanwhile waits
        for its end.
        """
        import tempfile  # in the job process only, as subprocess: see henbackup.process

        with tempfile.TemporaryFile() as other:
            start = time.monotonic()
            process, mask = self._spawn(argv, env, password_fd, other, follow_stderr, cwd)
            stream = process.stderr if follow_stderr else process.stdout
            assert stream is not None
            lines = self._follow(process, stream, target, on_line, other, mask, limit, sidecar)
            seconds = time.monotonic() - start
            messages = self._messages(self._read_other(other), target)
        return ToolResult(
            returncode=process.returncode,
            stdout=tuple(lines),
            messages=tuple(messages),
            seconds=seconds,
        )

    def _spawn(
        self,
        argv: tuple[str, ...],
        env: Mapping[str, str],
        password_fd: int | None,
        other: IO[bytes],
        follow_stderr: bool,
        cwd: str | None = None,
    ) -> tuple[subprocess.Popen[bytes], set[signal.Signals]]:
        """Start the tool in its own session (a terminal's Ctrl-C is ours to forward), with
        signals blocked (see process.spawn): returns it and the mask to restore. If we die,
        the tool gets its interrupt signal: a chance to remove its lock."""
        import subprocess

        streams = {"stdout": subprocess.PIPE, "stderr": other}
        if follow_stderr:
            streams = {"stdout": other, "stderr": subprocess.PIPE}
        try:
            return spawn(
                argv,
                self.interrupt,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                pass_fds=() if password_fd is None else (password_fd,),
                start_new_session=True,
                cwd=cwd,
                **streams,
            )
        except OSError as exc:
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
            raise EngineError(f"cannot start {self.tool} ({self.binary}): {reason}") from None
        finally:
            if password_fd is not None:
                os.close(password_fd)

    def _follow(
        self,
        process: subprocess.Popen[bytes],
        stream: IO[bytes],
        target: Target,
        on_line: LineHandler | None,
        other: IO[bytes],
        mask: set[signal.Signals],
        limit: float | None,
        sidecar: Sidecar | None = None,
    ) -> list[str]:
        """Read the stream until the tool exits; interrupt it cleanly if anything is raised.

        Restores the signal mask `mask` once the tool is under watch: a cancellation held
        since before the fork is raised there.
        """
        collected: list[str] = []
        run = None
        try:
            run = ToolRun(process, stream, other, sidecar, self.tool)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if self.on_spawn is not None:
                self.on_spawn(process.pid)
            if limit is None:  # a clean-up (bounded) is not interrupted: see _watch
                self.checkpoint()
            self._watch(run, target, collected.append if on_line is None else on_line, limit)
            process.wait()
        except BaseException as exc:  # JobCancelled, a stall, KeyboardInterrupt, a callback...
            # A refused tool holds no lock, and a clean-up would be refused too.
            cleanup = limit is None and not isinstance(exc, AccessRefused)
            try:
                self._interrupt(process, run, target, cleanup=cleanup)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        finally:
            if run is not None:
                run.close()
            stream.close()
        return collected

    def _watch(
        self, run: ToolRun, target: Target, on_line: LineHandler, limit: float | None
    ) -> None:
        """Pass the tool's lines to `on_line` until it exits, calling the checkpoint at least
        every WATCH_TICK (a tool that says nothing is cancelled all the same). Reports a
        stall once it lasts (on_stall); raises EngineError when it lasts stall_timeout, or
        past `limit`."""
        now = time.monotonic()
        watch = StallWatch(self.stall_timeout, now)
        deadline = None if limit is None else now + limit
        counters = None
        self.upload = None
        while not run.exited:
            lines = run.read(WATCH_TICK)
            if limit is None:  # a clean-up is short and bounded: a stop waits for its end
                self.checkpoint()
            moved = upload = None
            if not run.exited:
                moved, written = run.look()
                upload = None if written is None else self._measure(run, written)
            self.upload = upload or self.upload
            for line in lines:
                on_line(line)
                seen = self._counters(line)
                if seen is not None and seen != counters:
                    counters = seen
                    watch.moved(time.monotonic())
            if run.exited:
                return
            refused = self._refused(run, target)
            if refused is not None:
                raise refused
            now = time.monotonic()
            verdict = watch.look(now, moved, self.paused())
            if verdict == "expired":
                raise Stalled(
                    f"no progress for {format_duration(watch.timeout)}: {self._idle(run, target)}"
                )
            if verdict == "stalled" and self.on_stall is not None and limit is None:
                self.on_stall(watch.quiet, self._idle(run, target))
            if deadline is not None and now >= deadline:
                raise EngineError(f"{self.tool} did not end within {format_duration(limit or 0)}")

    def _idle(self, run: ToolRun, target: Target) -> str:
        """What the tool is doing while it makes no progress, in one line."""
        reason = idle_reason(read_state(run.process.pid))
        if reason is not None:
            return f"{self.tool} is {reason}"
        said = self._explain_idle(run, target)
        return said or f"{self.tool} waits and moves no data (is the backend up?)"

    def _interrupt(
        self, process: subprocess.Popen[bytes], run: ToolRun | None, target: Target, cleanup: bool
    ) -> None:
        """Stop the tool (see `end_program`), then, with `cleanup`, clean up after it. A run
        without `cleanup` (that clean-up itself) holds no lock: it is killed at once."""
        end_program(process, run, INTERRUPT_GRACE if cleanup else 0.0, self.interrupt)
        if cleanup:
            self._cleanup(target)

    def _while_locked(self, attempt: Callable[[], T], wait: float) -> T:
        """`attempt()`, and again while it raises RepositoryLocked, for up to `wait` seconds,
        pausing longer each time. Not the tool's own wait for a lock: it waits silently,
        moving nothing, and the stall watch would end it as stalled (backend down?) after
        stall_timeout, however long `wait` is."""
        deadline = time.monotonic() + wait
        delay = LOCK_BACKOFF_FIRST
        while True:
            try:
                return attempt()
            except RepositoryLocked:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                self._pause(min(delay, left))
                delay = min(delay * 2, LOCK_BACKOFF_MAX)

    def _pause(self, seconds: float) -> None:
        """Sleep, calling the checkpoint every WATCH_TICK: a stop is not kept waiting."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.checkpoint()
            time.sleep(min(left, WATCH_TICK))
