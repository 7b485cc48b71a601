"""Command hooks: an argv (no shell) in its own process group, bounded by a timeout.

The child starts a new session, so the hook and everything it spawned share one process
group: at the timeout, or when the job is stopped or cancelled (its safe point raises while
we wait), the whole group gets SIGTERM, then SIGKILL after a grace period. A hook that even
SIGKILL does not end within KILL_WAIT (blocked in the kernel) is left behind, failed.
Waiting uses a pidfd, the output pipe and the safe point's wakeup fd in one select(): no
polling.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from henbackup.config.model import CommandHook
from henbackup.hooks.outcome import SKIP_EXIT_STATUS, Attempt, Status
from henbackup.hooks.output import Tail
from henbackup.observe.events import FieldValue
from henbackup.process import NEVER, SafePoint, signal_name, spawn, stop_program

if TYPE_CHECKING:
    from subprocess import Popen as _Popen

    Popen = _Popen[bytes]


# A clean, minimal environment: the daemon's own (credentials included) is not passed on.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of the hook's process group
# After SIGKILL, how long to wait for the exit: a hook blocked in the kernel (a sync on a dead
# disk) may not die, and must not hold the job (its queue slot, a cancel, a stop) for ever.
KILL_WAIT = 5.0
UNKILLABLE = "did not die after SIGKILL (blocked in the kernel?)"
MAX_DRAIN = 1 << 20  # bytes read after the hook exited (its Tail keeps the last 4 KiB)


def describe(hook: CommandHook) -> str:
    """How events name the hook: its program only (arguments may hold secrets)."""
    return f"command {Path(hook.command[0]).name}" if hook.command else "command"


def environment(hook: CommandHook, context_env: dict[str, str]) -> dict[str, str]:
    """PATH, LANG and HOME, the run's HENBACKUP_* variables, then the hook's own env."""
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/")}
    env.update(context_env)
    env.update(hook.env)
    return env


def run_command(
    hook: CommandHook,
    env: dict[str, str],
    kill_grace: float = KILL_GRACE,
    safe_point: SafePoint = NEVER,
) -> Attempt:
    """Run `hook` to completion or its timeout; returns what happened.

    Exit 0 succeeded, 75 skipped, anything else failed. Raises only what `safe_point`
    raises while we wait (a stop, a cancel), after the process group is killed.
    """
    import subprocess  # in the job process only: see henbackup.process

    try:
        process, mask = spawn(
            hook.command,
            signal.SIGTERM,  # if the job process dies, the hook goes too
            env=env,
            cwd=hook.cwd or "/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as error:
        if hook.cwd and not os.path.isdir(hook.cwd):  # subprocess blames the program
            return Attempt("failed", f"cannot enter its cwd {hook.cwd}: {error.strerror}")
        return Attempt("failed", f"cannot run {hook.command[0]}: {error.strerror}")
    except ValueError:  # "embedded null byte": config checks refuse it, say nothing of it
        return Attempt("failed", "cannot run: its command or environment holds a NUL character")
    try:
        return _supervise(process, hook.timeout, kill_grace, mask, safe_point)
    finally:  # not `with process`: Popen's exit waits for the hook without bound
        if process.stdout is not None:
            process.stdout.close()


def _supervise(
    process: Popen,
    timeout: float,
    kill_grace: float,
    mask: set[signal.Signals],
    safe_point: SafePoint,
) -> Attempt:
    """Collect output until exit or timeout; whatever interrupts this kills the group.

    Restores the signal mask `mask` once the group is under watch.
    """
    tail = Tail()
    watch = None
    try:
        watch = _Watch(process, safe_point)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        safe_point.check()  # a stop that came while the hook started
        exited = watch.collect(tail, time.monotonic() + timeout)
        if not exited:
            _stop_group(process, watch, tail, kill_grace)
    except BaseException:
        try:
            _stop_group(process, watch, tail, kill_grace)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    finally:
        if watch is not None:
            watch.close()
    # Exited: reaped at once. Else stopped, and reaped unless it could not die (None).
    return _attempt(process.wait() if exited else process.returncode, exited, timeout, tail)


class _Watch:
    """The hook's output pipe and a pidfd of its leader, in one selector."""

    def __init__(self, process: Popen, safe_point: SafePoint) -> None:
        assert process.stdout is not None
        self.output = process.stdout.fileno()
        os.set_blocking(self.output, False)
        self.pidfd = os.pidfd_open(process.pid)
        self.safe_point = safe_point
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.output, selectors.EVENT_READ)
        self.selector.register(self.pidfd, selectors.EVENT_READ)
        if safe_point.fd is not None:
            self.selector.register(safe_point.fd, selectors.EVENT_READ)

    def collect(self, tail: Tail, deadline: float, stoppable: bool = True) -> bool:
        """Read output until the leader exits (returns True) or `deadline` (returns False).

        With `stoppable`, what the safe point raises meanwhile ends the wait.
        """
        while (remaining := deadline - time.monotonic()) > 0:
            for key, _ in self.selector.select(remaining):
                if key.fd == self.safe_point.fd:
                    self.safe_point.woken() if stoppable else self.safe_point.drain()
                elif key.fd == self.pidfd:
                    self._drain(tail)  # what it wrote before exiting; its children may go on
                    return True
                elif not self._read(tail):
                    self.selector.unregister(self.output)
        return False

    def _read(self, tail: Tail) -> bool:
        """Read what is there; False at end of file."""
        try:
            chunk = os.read(self.output, 65536)
        except BlockingIOError:
            return True
        tail.add(chunk)
        return bool(chunk)

    def _drain(self, tail: Tail) -> None:
        """What the exited hook left in the pipe, up to MAX_DRAIN: a child of it that
        writes on forever (`yes &`) must not hold the job."""
        taken = 0
        with contextlib.suppress(BlockingIOError):
            while taken < MAX_DRAIN and (chunk := os.read(self.output, 65536)):
                tail.add(chunk)
                taken += len(chunk)

    def close(self) -> None:
        self.selector.close()
        os.close(self.pidfd)


def _stop_group(process: Popen, watch: _Watch | None, tail: Tail, kill_grace: float) -> None:
    """SIGTERM the hook's process group, SIGKILL it after `kill_grace` (stragglers too, even
    if the leader left), reap the leader if it dies within KILL_WAIT; its output is kept
    meanwhile."""

    def wait_until(deadline: float) -> None:
        if watch is not None:
            watch.collect(tail, deadline, stoppable=False)

    stop_program(
        process, (signal.SIGTERM,), kill_grace, wait_until, group=True, reap_within=KILL_WAIT
    )


def _attempt(status: int | None, exited: bool, timeout: float, tail: Tail) -> Attempt:
    """What the hook's end makes of the attempt; `status` None: it could not be reaped."""

    def attempt(result: Status, error: str | None, **fields: FieldValue) -> Attempt:
        return Attempt(result, error, bytes(tail.data), tail.truncated, fields)

    if not exited:
        unkillable = f" and {UNKILLABLE}" if status is None else ""
        return attempt("failed", f"timed out after {timeout:g}s{unkillable}")
    assert status is not None  # an exited leader is reaped at once
    if status < 0:
        return attempt("failed", f"killed by {signal_name(-status)}")
    if status == 0:
        return attempt("succeeded", None, exit_status=status)
    if status == SKIP_EXIT_STATUS:
        return attempt("skipped", f"exited with status {status}", exit_status=status)
    return attempt("failed", f"exited with status {status}", exit_status=status)
