"""The master as a child subreaper: it adopts and reaps orphans, never a tracked child.

Run in a process of its own (a subreaper is for life): real forks, real waitid.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from henbackup.process import describe_exit

SCENARIO = textwrap.dedent(
    """
    import os, time
    from henbackup.process import become_subreaper, reap_orphans

    become_subreaper()
    hold_r, hold_w = os.pipe()  # the tracked child lives until this closes
    tracked = os.fork()
    if tracked == 0:
        os.close(hold_w)
        os.read(hold_r, 1)
        os._exit(7)
    os.close(hold_r)

    told_r, told_w = os.pipe()  # the orphan's pid, from its first parent
    middle = os.fork()
    if middle == 0:
        orphan = os.fork()
        if orphan == 0:
            time.sleep(0.3)
            os._exit(0)
        os.write(told_w, str(orphan).encode())
        os._exit(0)
    os.waitpid(middle, 0)  # the middle one is gone: its child is ours now
    orphan = int(os.read(told_r, 32))

    def stat(pid):
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()

    ppid = int(stat(orphan)[1])
    reaped, deadline = [], time.monotonic() + 30
    while orphan not in reaped and time.monotonic() < deadline:
        reaped += reap_orphans({tracked})
        time.sleep(0.05)
    gone = not os.path.exists(f"/proc/{orphan}")

    os.close(hold_w)  # the tracked child exits now: its status is its owner's
    time.sleep(0.3)
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, tracked, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            break
        time.sleep(0.05)
    stolen = reap_orphans({tracked})
    _, status = os.waitpid(tracked, 0)
    print(ppid == os.getpid(), reaped == [orphan], gone, stolen, os.waitstatus_to_exitcode(status))
    """
)


def test_orphans_are_adopted_and_reaped_and_a_tracked_child_keeps_its_status() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True", "[]", "7"]


def test_an_exit_is_described_by_its_status_or_signal_even_a_real_time_one() -> None:
    assert describe_exit(3) == "exited with 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-(signal.SIGRTMIN + 6)) == f"was killed by signal {signal.SIGRTMIN + 6}"
