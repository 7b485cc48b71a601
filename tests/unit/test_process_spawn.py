"""Signals across the fork that becomes restic or a command hook (process.spawn): our
Python handlers never run in the child.

A job's SIGTERM or SIGUSR1 handler records a stop or a cancel; run in the child between fork
and exec, it would write to the parent's wakeup pipe and record it in the wrong process (and
a handler that raised would run the parent's code there). The window is microseconds wide,
so the tests widen it: the child sends itself the signal, as a process-group signal would
arrive, then does what the spawner's preexec_fn does.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from henbackup.config.model import CommandHook
from henbackup.hooks.command import run_command
from henbackup.process import _before_exec, block_signals, spawn


def assert_our_handler_never_runs(tmp_path: Path, child_setup: Callable[[int, set], None]) -> None:
    """Fork with every signal blocked (as Popen does); the child sends itself SIGUSR1, runs
    `child_setup(parent, mask)` and execs: SIGUSR1 must take its default action there."""
    ran = tmp_path / "handler-ran-in"

    def handler(signum: int, frame: FrameType | None) -> None:
        ran.write_text(str(os.getpid()))

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        mask = block_signals()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: only os._exit leaves it
            try:
                os.kill(os.getpid(), signal.SIGUSR1)
                child_setup(parent, mask)
                os.execv("/bin/true", ["true"])
            finally:
                os._exit(99)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not ran.exists(), f"our handler ran in process {ran.read_text()}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1


def test_a_signal_between_fork_and_exec_gets_its_default_action_not_our_handler(
    tmp_path: Path,
) -> None:
    assert_our_handler_never_runs(
        tmp_path, lambda parent, mask: _before_exec(parent, mask, signal.SIGINT)
    )


def test_blocking_returns_the_mask_to_restore() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    mask = block_signals()
    try:
        assert mask == before
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, ())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == before


class _Captured(Exception):
    """Raised by the fake Popen: the test has the preexec_fn it was given."""


def test_a_command_hook_gets_the_same_child_setup(tmp_path: Path, monkeypatch) -> None:
    """The preexec_fn a command hook is spawned with, run in a child that the signal reaches
    between fork and exec (a fake Popen hands it over: the real window cannot be hit)."""
    given: dict[str, object] = {}

    def capture(*args: object, **kwargs: object) -> None:
        given.update(kwargs)
        raise _Captured

    monkeypatch.setattr(subprocess, "Popen", capture)
    with pytest.raises(_Captured):
        run_command(CommandHook(command=("/bin/true",)), {})
    monkeypatch.undo()
    preexec = given["preexec_fn"]
    assert callable(preexec)
    assert_our_handler_never_runs(tmp_path, lambda parent, mask: preexec())


def test_the_signal_that_ends_a_program_is_never_inherited_ignored() -> None:
    # A shell's background job ignores SIGINT, and a Python program (borg) keeps an ignored
    # SIGINT: interrupted, it would run on until SIGKILL and leave its lock behind.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process, mask = spawn(["sleep", "60"], signal.SIGINT)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
        ignored = int(
            next(line for line in status.splitlines() if line.startswith("SigIgn:"))[7:], 16
        )
        assert not ignored & (1 << (signal.SIGINT - 1))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == -signal.SIGINT
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
