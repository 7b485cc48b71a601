"""Faults of a backup's worker and of its job process: signals, unsaved records, hooks.

Each test provokes the fault for real (a signal, a read-only state directory, a journald
fed an undecodable file name, a hook target answering 500) and checks what users see.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The job process gets SIGUSR1 (`henbackupctl cancel`) while it holds the host queue's lock
# (releasing a slot, entering the queue, polling its ticket): the handler must not wait for
# that lock, which only this same process could release.
CANCEL_WHILE_LOCKED = textwrap.dedent(
    """
    import os, signal, sys
    from henbackup.jobs import entry
    from henbackup.scheduler import locks
    entry._handle_signals()
    with locks.locked(entry.host_scheduler().directory / "lock"):
        os.kill(os.getpid(), signal.SIGUSR1)
    print("the queue lock was released")
    """
)


def test_a_cancel_arriving_while_the_job_holds_the_queue_lock_does_not_hang(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", CANCEL_WHILE_LOCKED],
        env={"RUNTIME_DIRECTORY": str(tmp_path), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,  # before the fix: for ever (the flock never comes)
    )
    assert (done.returncode, done.stdout) == (0, "the queue lock was released\n"), done.stderr
