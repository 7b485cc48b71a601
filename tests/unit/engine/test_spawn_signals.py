"""Signals across the fork that becomes restic: our Python handlers never run in the child.

A job's SIGTERM or SIGUSR1 handler raises to stop restic; run in the child between fork and
exec, it would stop the wrong process. The window is microseconds wide, so the test widens
it: the child sends itself the signal, as a process-group signal would arrive, then does
what the engine's preexec_fn does.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

from henbackup.engine.restic import _block_signals, _child_setup


def test_a_signal_between_fork_and_exec_gets_its_default_action_not_our_handler(
    tmp_path: Path,
) -> None:
    ran = tmp_path / "handler-ran-in"

    def handler(signum: int, frame: FrameType | None) -> None:
        ran.write_text(str(os.getpid()))

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        mask = _block_signals()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: only os._exit leaves it
            try:
                os.kill(os.getpid(), signal.SIGUSR1)
                _child_setup(parent, mask)
                os.execv("/bin/true", ["true"])
            finally:
                os._exit(99)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not ran.exists(), f"our handler ran in process {ran.read_text()}"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1


def test_blocking_returns_the_mask_to_restore() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    mask = _block_signals()
    try:
        assert mask == before
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, ())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == before
